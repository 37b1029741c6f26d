"""The potential: one energy function, with forces (and later stress) by differentiation.

``energy_fn(params, graph) -> (S,)`` total energies in float64 eV. Everything else is built on
top of it, in the spirit of jax-md: forces are ``-dE/dR`` by automatic differentiation.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from so3krates.batching import Graph
from so3krates.model import So3krates


class Prediction(NamedTuple):
    """Model output for a padded batch (padding entries are zero).

    Attributes:
        energy: total energies in eV, (S,) float64.
        forces: forces in eV/Å, (N, 3), model dtype.
        atomic_energies: per-atom energies in eV, (N,) float64.
    """

    energy: jnp.ndarray
    forces: jnp.ndarray
    atomic_energies: jnp.ndarray


def pair_vectors(graph: Graph) -> jnp.ndarray:
    """r_ij = R_j - R_i + S_ij @ cell, (P, 3) in Å."""
    cell = graph.cells[graph.structure[graph.centers]]
    offset = jnp.einsum("pk,pkl->pl", graph.shifts.astype(cell.dtype), cell)
    return graph.positions[graph.neighbors] - graph.positions[graph.centers] + offset


def make_atomic_energy_fn(
    model: So3krates, reference_energies: np.ndarray, pair_halves: bool = False
) -> Callable[[dict, Graph], jnp.ndarray]:
    """``atomic_energy_fn(params, graph) -> (N,)`` float64 per-atom energies.

    Args:
        model: the network.
        reference_energies: per-element reference energies e_Z in eV, indexed by atomic
            number, shape (num_elements,); kept in float64.
        pair_halves: the graphs' pairs are in the halves layout (``GraphDataset.pair_halves``;
            faster; NaN energies and forces for graphs that are not, see ``So3krates``).
    """
    ref = jnp.asarray(np.asarray(reference_energies, dtype=np.float64))

    def atomic_energy_fn(params: dict, graph: Graph) -> jnp.ndarray:
        e = model.apply(
            {"params": params},
            graph.numbers,
            pair_vectors(graph),
            graph.centers,
            graph.neighbors,
            graph.pair_mask,
            pair_halves,
        )
        e = e.astype(jnp.float64) + ref[graph.numbers]
        return jnp.where(graph.atom_mask, e, 0.0)

    return atomic_energy_fn


def make_energy_fn(model: So3krates, reference_energies: np.ndarray, pair_halves: bool = False):
    """``energy_fn(params, graph) -> (S,)`` float64 total energies per structure
    (``pair_halves``: see :func:`make_atomic_energy_fn`)."""
    atomic_energy_fn = make_atomic_energy_fn(model, reference_energies, pair_halves)

    def energy_fn(params: dict, graph: Graph) -> jnp.ndarray:
        e = atomic_energy_fn(params, graph)
        return jax.ops.segment_sum(e, graph.structure, num_segments=graph.cells.shape[0])

    return energy_fn


def make_predict_fn(model: So3krates, reference_energies: np.ndarray, pair_halves: bool = False):
    """``predict(params, graph) -> Prediction`` with forces = -dE/dR (one backward pass)
    (``pair_halves``: see :func:`make_atomic_energy_fn`)."""
    atomic_energy_fn = make_atomic_energy_fn(model, reference_energies, pair_halves)

    def predict(params: dict, graph: Graph) -> Prediction:
        def total(positions):
            e = atomic_energy_fn(params, graph._replace(positions=positions))
            return jnp.sum(e), e

        (_, atomic), grad = jax.value_and_grad(total, has_aux=True)(graph.positions)
        energy = jax.ops.segment_sum(atomic, graph.structure, num_segments=graph.cells.shape[0])
        forces = jnp.where(graph.atom_mask[:, None], -grad, 0.0)
        return Prediction(energy=energy, forces=forces, atomic_energies=atomic)

    return predict
