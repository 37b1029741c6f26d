"""The heat flux of semi-local potentials, exact, from the energy function (glp's unfolding).

For site energies ``U_j`` (j in the simulation cell B) that depend on all atoms within the
potential's receptive field, the energy flux is

    J = Σ_{j∈B} (U_j + m_j v_j² / 2) v_j  +  Σ_{j∈B} Σ_{i∈U} (r_j − r_i) (∂U_j/∂r_i · v_i),

the time derivative of the energy moment ``Σ_j r_j e_j`` (Hardy). The sum over ``i`` runs over
the *unfolded* system U: the cell's atoms plus every periodic replica within the receptive
field (``num_layers × cutoff`` for a message-passing network), each with its own Cartesian
position and its original atom's velocity, so that no minimum-image ambiguity arises
(Langer et al., Phys. Rev. B 108, L100302, 2023). The double sum needs no Jacobian:

    Σ_{i,j} (r_j − r_i)(∂U_j/∂r_i · v_i) = Σ_{j∈B} r_j (dU_j/dt) − Σ_{i∈U} r_i (∂U_B/∂r_i · v_i),

``dU_j/dt`` by one forward-mode product (``jax.jvp`` along the velocities) and ``∂U_B/∂r_i``
by one backward pass, ``U_B = Σ_{j∈B} U_j``. The energy function must support forward mode:
for trained models their exact network (``Model.exact_module``), not the inference path's
custom derivative rules.

Units: positions Å, velocities Å/fs, energies eV: J in eV·Å/fs.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ase import units

from so3krates.batching import Capacity, Graph, single_graph
from so3krates.neighbours import neighbour_list


FS = units.fs  # 1 fs in ASE time units: velocities in Å/fs are v_ase * FS


class Unfolded(NamedTuple):
    """One structure unfolded into an open (non-periodic) system.

    Attributes:
        graph: the unfolded system as a padded molecule :class:`Graph`; its first ``n_cell``
            atoms are the cell's, in order.
        index: (M,) the cell atom each unfolded atom is a replica of (padding: 0).
        n_cell: number of atoms in the cell.
    """

    graph: Graph
    index: np.ndarray
    n_cell: int


def unfold(numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
           reach: float, cutoff: float, capacity: Capacity | None = None,
           dtype=np.float64) -> tuple[Unfolded, Capacity]:
    """The cell's atoms plus every replica within ``reach`` (Å) of one of them, as a molecule
    graph with pairs within ``cutoff`` (host side, ``vesin``). ``capacity`` as in
    :func:`so3krates.batching.single_graph` (reuse it to keep the compiled shape)."""
    n = len(numbers)
    nl = neighbour_list(positions, cell, pbc, reach)
    replicas = {(int(i), tuple(int(s) for s in shift))
                for i, shift in zip(nl.neighbours, nl.shifts) if np.any(shift)}
    replicas = sorted(replicas)
    index = np.concatenate([np.arange(n), np.array([i for i, _ in replicas], dtype=np.int64)])
    shifts = np.array([s for _, s in replicas], dtype=np.float64).reshape(-1, 3)
    unfolded = np.concatenate([positions, positions[index[n:]] + shifts @ np.asarray(cell)])
    graph, capacity = single_graph(np.asarray(numbers)[index], unfolded, np.zeros((3, 3)),
                                   np.zeros(3, bool), cutoff, capacity, dtype=dtype)
    padded = np.zeros(graph.positions.shape[0], dtype=np.int64)
    padded[: len(index)] = index
    return Unfolded(graph, padded, n), capacity


def heat_flux_fn(atomic_energy_fn: Callable) -> Callable:
    """``fn(params, graph, velocities (M, 3), masses (M,), n_cell) -> (J, J_potential,
    J_convective)``, each (3,) in eV·Å/fs, for an unfolded system (:func:`unfold`);
    velocities and masses are those of each unfolded atom's original (padding: zero).

    ``atomic_energy_fn(params, graph) -> (M,)`` per-atom energies; it must support
    ``jax.jvp``. The convective term takes the site energies relative to their mean over the
    cell's atoms of the same element, as the energy zero of each element is arbitrary (for one
    element with zero total momentum this changes nothing)."""

    def fn(params, graph: Graph, velocities, masses, n_cell: int):
        m = graph.positions.shape[0]
        in_cell = jnp.arange(m) < n_cell

        def energies(positions):
            return atomic_energy_fn(params, graph._replace(positions=positions))

        def cell_energy(positions):
            return jnp.sum(jnp.where(in_cell, energies(positions), 0.0))

        r = graph.positions
        v = velocities.astype(r.dtype)
        grad = jax.grad(cell_energy)(r)
        e, de_dt = jax.jvp(energies, (r,), (v,))
        e, de_dt = jnp.where(in_cell, e, 0.0), jnp.where(in_cell, de_dt, 0.0)
        j_pot = (jnp.einsum("j,ja->a", de_dt, r.astype(de_dt.dtype))
                 - jnp.einsum("i,ia->a", jnp.sum(grad * v, axis=1), r).astype(de_dt.dtype))
        # Site energies relative to their element's mean in the cell (per-element sums: O(M)).
        z = graph.numbers
        sums = jax.ops.segment_sum(e, z, num_segments=119)
        counts = jax.ops.segment_sum(in_cell.astype(e.dtype), z, num_segments=119)
        mean = (sums / jnp.maximum(counts, 1.0))[z]
        kinetic = 0.5 * masses * jnp.sum(v * v, axis=1) / FS**2  # eV (v in Å/fs)
        site = jnp.where(in_cell, e - mean + kinetic, 0.0)
        j_conv = jnp.einsum("j,ja->a", site, v.astype(site.dtype))
        return j_pot + j_conv, j_pot, j_conv

    return fn


class HeatFlux:
    """The heat flux of one periodic structure at given positions and velocities.

    Args:
        atomic_energy_fn: ``(params, graph) -> (M,)`` per-atom energies (forward-mode
            differentiable), e.g. ``so3krates.potential.make_atomic_energy_fn`` of a model's
            ``exact_module()``, or a term's ``atomic_energy_fn``.
        params: its parameters.
        numbers: (N,) atomic numbers; masses: (N,) amu; pbc: (3,).
        reach: the receptive field in Å (``num_layers × cutoff`` for SO3krates; the cutoff
            for a pair potential).
        cutoff: the potential's pair cutoff in Å.
    """

    def __init__(self, atomic_energy_fn: Callable, params, numbers, masses, pbc, reach: float,
                 cutoff: float, dtype=np.float64):
        self.params, self.numbers = params, np.asarray(numbers)
        self.masses, self.pbc = np.asarray(masses, np.float64), np.asarray(pbc, bool)
        self.reach, self.cutoff, self.dtype = float(reach), float(cutoff), dtype
        self._capacity: Capacity | None = None
        self._fn = jax.jit(heat_flux_fn(atomic_energy_fn), static_argnames="n_cell")

    def __call__(self, positions: np.ndarray, velocities: np.ndarray, cell: np.ndarray):
        """``(J, J_potential, J_convective)`` (3,) each in eV·Å/fs; positions Å (wrapped or
        not: the flux does not depend on which image of an atom is given), velocities Å/fs,
        cell (3, 3) Å."""
        # Wrapped into the cell first: the MD engine's positions are unwrapped, and in a liquid
        # atoms diffuse out of the cell, which would grow the unfolded system (and recompile
        # the flux) without end.
        cell = np.asarray(cell, np.float64)
        positions = np.asarray(positions, np.float64)
        if self.pbc.any():
            frac = positions @ np.linalg.inv(cell)
            positions = positions - (np.floor(frac) * self.pbc) @ cell
        u, self._capacity = unfold(self.numbers, positions, cell,
                                   self.pbc, self.reach, self.cutoff, self._capacity, self.dtype)
        n_unfolded = int(np.sum(u.graph.atom_mask))
        valid = np.arange(len(u.index)) < n_unfolded
        v = np.where(valid[:, None], np.asarray(velocities, np.float64)[u.index], 0.0)
        m = np.where(valid, self.masses[u.index], 0.0)
        return tuple(np.asarray(a, np.float64)
                     for a in self._fn(self.params, u.graph, v, m, n_cell=u.n_cell))

    def compiled_variants(self) -> int:
        return self._fn._cache_size()
