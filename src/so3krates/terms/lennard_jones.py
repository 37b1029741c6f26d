"""The Lennard-Jones pair potential with ASE's smooth cut-off, as an energy term.

``u(r) = 4 ε ((σ/r)^12 − (σ/r)^6) · s(r²)``, ``s`` going from 1 at ``ro`` to 0 at ``rc`` as
in ``ase.calculators.lj.LennardJones(smooth=True)`` (jax-md's C¹ switch in r²); each pair's
energy is split evenly between its two atoms. A correctness anchor of the energy-function
contract (forces, stress, heat flux derived from it must match ASE's analytic values) and a
model for argon.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from so3krates.batching import Graph
from so3krates.potential import pair_vectors


def smooth_switch(r2: jnp.ndarray, rc2: float, ro2: float) -> jnp.ndarray:
    """1 below ``ro2``, 0 above ``rc2``, C¹ in between (all arguments squared distances)."""
    inner = (rc2 - r2) ** 2 * (rc2 + 2 * r2 - 3 * ro2) / (rc2 - ro2) ** 3
    return jnp.where(r2 < ro2, 1.0, jnp.where(r2 < rc2, inner, 0.0))


class LennardJones(NamedTuple):
    """Lennard-Jones parameters: ``sigma`` (Å), ``epsilon`` (eV), cut-off ``rc`` (Å) and the
    onset of the smooth switch ``ro`` (Å; default 0.66 rc, as ASE)."""

    sigma: float = 1.0
    epsilon: float = 1.0
    rc: float = 3.0
    ro: float | None = None

    @property
    def cutoff(self) -> float:
        return self.rc

    def pair_energies(self, r2: jnp.ndarray) -> jnp.ndarray:
        """u of squared distances (P,) in Å², eV (0 beyond ``rc``)."""
        ro = 0.66 * self.rc if self.ro is None else self.ro
        inside = r2 < self.rc**2
        safe = jnp.where(inside, r2, self.rc**2)  # no 1/0 for padding pairs
        c6 = (self.sigma**2 / safe) ** 3
        u = 4.0 * self.epsilon * (c6 * c6 - c6) * smooth_switch(safe, self.rc**2, ro**2)
        return jnp.where(inside, u, 0.0)

    def atomic_energy_fn(self, params, graph: Graph, vectors=None) -> jnp.ndarray:
        """Per-atom energies (N,) in eV of a padded graph (full neighbour list: each pair is
        listed both ways, and each listing gives its centre half the pair energy).
        ``params`` is unused (the term has none); the signature is the potential's."""
        del params
        v = pair_vectors(graph) if vectors is None else vectors
        # Padding pairs (zero vectors) placed beyond the cutoff: no 1/0 in any derivative.
        r2 = jnp.where(graph.pair_mask, jnp.sum(v * v, axis=-1), 2.0 * self.rc**2)
        u = jnp.where(graph.pair_mask, self.pair_energies(r2), 0.0)
        n_atoms = graph.positions.shape[0]
        return 0.5 * jax.ops.segment_sum(u, graph.centers, n_atoms)
