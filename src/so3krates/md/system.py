"""One structure for MD: static data, and the model's energy on in-loop neighbours.

``energy_fn(positions (N, 3), cell (3, 3), neighbours)`` (the jax-md shape) returns the total
energy () or per-atom energies (N,) in eV; it is what every integrator, relaxer and explorer
is given, and they derive forces and, where asked, the virial from it
(``so3krates.potential.derive``). :func:`model_energy_fn` makes it from a trained model; any
other pure function with the same signature (an analytic test potential in a few lines)
works just as well.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_masses

from so3krates.batching import Graph, KSpace, PairSet
from so3krates.model_io import check_efa_structures, electronic_state, reference_table
from so3krates.neighbours import long_range_list
from so3krates.neighbours.kspace import kspace_indices, mesh_shape, use_pme
from so3krates.neighbours import verlet as nl
from so3krates.neighbours.verlet import Neighbours, complete_cell
from so3krates.potential import derive, make_atomic_energy_fn

EnergyFn = Callable[[jnp.ndarray, jnp.ndarray, Neighbours], jnp.ndarray]


class System(NamedTuple):
    """What stays fixed during a run.

    Attributes:
        numbers: atomic numbers, (N,) int.
        masses: atomic masses in amu, (N,) float64.
        cell: lattice vectors as rows in Å, (3, 3) float64 (zeros for molecules; zero vectors
            of open directions of slabs are completed, see ``complete_cell``).
        pbc: periodic directions, (3,) bool.
        charge: total charge in e.
        spin: unpaired electrons.
    """

    numbers: np.ndarray
    masses: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    charge: float = 0.0
    spin: float = 0.0

    @classmethod
    def from_atoms(cls, atoms) -> "System":
        """From an ``ase.Atoms`` (its masses, cell and pbc; total charge and unpaired electrons
        from ``info``, see ``so3krates.model_io.electronic_state``)."""
        pbc = np.asarray(atoms.pbc, dtype=bool)
        charge, spin = electronic_state(atoms.info)
        return cls(
            numbers=np.asarray(atoms.numbers, dtype=np.int32),
            masses=np.asarray(atoms.get_masses(), dtype=np.float64),
            cell=complete_cell(atoms.cell[:], pbc),
            pbc=pbc,
            charge=charge,
            spin=spin,
        )

    @classmethod
    def from_numbers(cls, numbers, cell=None, pbc=False) -> "System":
        """Standard isotope masses; a molecule unless ``cell`` and ``pbc`` are given."""
        numbers = np.asarray(numbers, dtype=np.int32)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        cell = complete_cell(np.zeros((3, 3)) if cell is None else cell, pbc)
        return cls(numbers, atomic_masses[numbers].astype(np.float64), cell, pbc)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def degrees_of_freedom(self) -> int:
        """3N - 3: the centre-of-mass momentum is removed and kept at zero."""
        return max(3 * self.n_atoms - 3, 1)


def graph(positions: jnp.ndarray, cell: jnp.ndarray, system: System, nbrs: Neighbours,
          long_range: bool = False, kspace: KSpace | None = None) -> Graph:
    """A one-structure :class:`Graph` (plus one padding atom) from in-loop neighbours.

    ``nbrs`` already holds only the pairs within the cutoff at these positions (see
    :func:`so3krates.neighbours.verlet.select`); the model's cutoff function is exactly zero
    beyond the cutoff, so a pair that rounding in a lower precision puts just outside adds 0.
    ``cell`` (3, 3) is traced: it may change during a run (NPT, cell relaxation).
    ``long_range``: add the long-range pairs: those of ``nbrs.long_range`` (a list built
    with a ``long_cutoff``), else every pair of the molecule (a constant). ``kspace``: the
    reciprocal part of a 3D-periodic structure's Ewald sum (fixed during the run), from
    :func:`kspace_of`.
    """
    n = system.n_atoms
    dtype = positions.dtype
    cell = cell.astype(dtype)
    pad = jnp.array([[1000.0, 0.0, 0.0]], dtype)
    return Graph(
        positions=jnp.concatenate([positions, pad]),
        numbers=jnp.asarray(np.append(system.numbers, 0), jnp.int32),
        structure=jnp.asarray(np.append(np.zeros(n, np.int32), 1)),
        centers=nbrs.centers,
        neighbours=nbrs.neighbours,
        shifts=nbrs.shifts.astype(dtype),
        cells=jnp.stack([cell, jnp.zeros_like(cell)]),
        atom_mask=jnp.asarray(np.arange(n + 1) < n),
        pair_mask=nbrs.centers < n,
        structure_mask=jnp.array([True, False]),
        charge=jnp.array([system.charge, 0.0], dtype),
        spin=jnp.array([system.spin, 0.0], dtype),
        long_range=_long_pairs(system, nbrs) if long_range else None,
        ewald=kspace,
    )


def kspace_of(system: System, terms) -> KSpace | None:
    """The reciprocal part of the Ewald sum of ``system`` (and a padding structure) for the
    physical terms ``terms`` of a model: the k-vectors of the start cell, or its particle-mesh
    grid (``terms.kspace_method``, see ``so3krates.neighbours.kspace.use_pme``); None for a
    structure without one. Under NPT both stay those of the start cell: exact derivatives,
    with an accuracy that drifts with large deformations (see so3krates.terms.ewald)."""
    k_cutoff = terms.graph_options()["kspace_cutoff"]
    if not (system.pbc.all() and k_cutoff is not None):
        return None
    m = kspace_indices(system.cell, k_cutoff)
    periodic = jnp.array([True, False])
    if use_pme(terms.kspace_method, system.n_atoms, len(m)):
        return KSpace(jnp.zeros((2, 0, 3), jnp.int32), periodic,
                      jnp.zeros(mesh_shape(system.cell, terms.ewald_alpha), jnp.int8))
    m = jnp.asarray(np.concatenate([m, np.zeros((1, 3), np.int32)]))
    return KSpace(jnp.stack([m, jnp.zeros_like(m)]), periodic)


def _long_pairs(system: System, nbrs: Neighbours) -> PairSet:
    """The long-range pairs of the in-loop list, or every pair of a molecule."""
    if nbrs.long_range is None:
        return _all_pairs(system)
    lp = nbrs.long_range
    return PairSet(lp.centers, lp.neighbours, lp.shifts, lp.centers < system.n_atoms)


def _all_pairs(system: System) -> PairSet:
    """Every pair ``i != j`` of a molecule, as constants."""
    if system.pbc.any():
        raise ValueError("long-range terms of a periodic structure need the long-range "
                         "neighbour list: build it with long_cutoff=long_range_cutoff(model)")
    lists = long_range_list(np.zeros((system.n_atoms, 3)), system.cell, system.pbc, None)
    return PairSet(jnp.asarray(lists.centers), jnp.asarray(lists.neighbours),
                   jnp.zeros((len(lists.centers), 3)), jnp.ones(len(lists.centers), bool))


def long_range_cutoff(model) -> float | None:
    """The cutoff (Å) of a model's long-range pairs for an in-loop neighbour list (the
    ``long_cutoff`` of ``so3krates.neighbours.verlet.allocate``, the engine and the
    relaxers), or None: no long-range terms, or every pair of a molecule."""
    return model.config.long_range_cutoff if model.terms.long_range else None


def model_energy_fn(model, system: System, module=None, params=None) -> EnergyFn:
    """``energy_fn(positions (N,3), cell (3,3), nbrs) -> per-atom energies (N,)`` in float64
    eV of a trained model on in-loop neighbours.

    The network sees positions and cell in the model's dtype (the integrators keep positions
    and velocities in float64, cheap next to the model); derivatives flow back to the
    callers' dtype.

    Args:
        model: a loaded :class:`so3krates.model_io.Model` (its dtype sets the precision).
        system: the structure being simulated.
        module, params: another module of the model and its parameters (default: the
            inference module and :attr:`~so3krates.model_io.Model.inference_params`; the
            model's ``exact_module()`` and ``params`` for forward-mode derivatives).
    """
    model.check_elements(system.numbers)
    check_efa_structures(model.config, None, system.pbc)  # EFA: no periodic MD
    # The device neighbour lists are in the halves layout (see ``so3krates.neighbours.verlet``).
    atomic = make_atomic_energy_fn(module or model.module,
                                   reference_table(model.reference_energies), pair_halves=True,
                                   terms=model.terms)
    params = model.inference_params if params is None else params
    n, dtype = system.n_atoms, jnp.dtype(model.dtype)
    long_range, kspace = model.terms.long_range, None
    if long_range:
        model.terms.check_periodic(system.pbc)  # the errors now, not at the first step
        kspace = kspace_of(system, model.terms)

    def energy_fn(positions, cell, nbrs):
        g = graph(positions.astype(dtype), cell, system, nbrs, long_range, kspace)
        return atomic(params, g)[:n]

    return energy_fn


def positions_force_fn(energy_fn: EnergyFn, system: System, cutoff: float, positions: np.ndarray,
                       long_cutoff: float | None = None):
    """``fn(positions (N,3)) -> (energy, forces)`` that builds its own neighbour list each call.

    For relaxation and quenches, where atoms may move far between calls. The list is sized
    from ``positions`` with generous headroom (capped at all pairs for molecules); should a
    structure still outgrow it, energy and forces come back NaN rather than silently
    missing pairs, and FIRE then reports that structure as not converged. ``long_cutoff``:
    also the long-range pairs (:func:`long_range_cutoff`).
    """
    spec = nl.allocate(positions, system.cell, system.pbc, cutoff, 0.0, headroom=1.5,
                       long_cutoff=long_cutoff)
    cell = jnp.asarray(system.cell)
    forces_fn = derive(energy_fn)

    def fn(positions):
        nbrs = nl.build(positions, cell, spec)
        out = forces_fn(positions, cell, nbrs)
        return (jnp.where(nbrs.overflow, jnp.nan, out.energy),
                jnp.where(nbrs.overflow, jnp.nan, out.forces))

    return fn


class CellFilter(NamedTuple):
    """A structure's positions and cell as one (N + 3, 3) array of generalised coordinates, for
    relaxing both with an optimiser of positions (:func:`so3krates.md.relax.fire_relax`).

    ``x = [R0 ; c ε]``: positions ``R = R0 (1 + ε)`` and cell ``cell0 (1 + ε)`` under a
    symmetric strain ε from the start cell, ``c`` = ``cell_factor``. ``force_fn(x)`` returns
    the enthalpy ``E + P V`` (eV) and its negative gradient: atomic forces in the undeformed
    frame and, in the last three rows, ``-(dE/dε + P V) / c`` (eV), so that a force threshold
    ``fmax`` on them bounds the stress: ``|σ + P| <= fmax c / V``.
    """

    force_fn: Callable
    x0: jnp.ndarray
    cell0: np.ndarray
    cell_factor: float

    def unpack(self, x) -> tuple[np.ndarray, np.ndarray]:
        """``(positions (N, 3), cell (3, 3))`` in Å of generalised coordinates ``x``."""
        x = np.asarray(x, np.float64)
        deform = np.eye(3) + _symmetric(x[-3:]) / self.cell_factor
        return x[:-3] @ deform, self.cell0 @ deform


def _symmetric(a):
    return 0.5 * (a + a.T)


def cell_filter(energy_fn: EnergyFn, system: System, cutoff: float, positions: np.ndarray,
                pressure: float = 0.0, cell_factor: float | None = None,
                long_cutoff: float | None = None) -> CellFilter:
    """A :class:`CellFilter` of ``energy_fn`` for ``system`` (periodic in all directions) at
    ``positions`` (Å) under ``pressure`` (eV/Å³); ``cell_factor`` defaults to the number of
    atoms (as ASE's cell filters). The neighbour list is sized with room for the cell to
    shrink by 15 %; beyond that the energy comes back NaN (the relaxation then fails)."""
    if not system.pbc.all():
        raise ValueError("a cell relaxation needs a cell periodic in all three directions")
    n = system.n_atoms
    cell_factor = float(cell_factor or n)
    cell0 = np.asarray(system.cell, np.float64)
    spec = nl.allocate(positions, cell0, system.pbc, cutoff, 0.0, headroom=1.5,
                       long_cutoff=long_cutoff)
    spec = spec._replace(images=nl.lattice_images(cell0, system.pbc, spec.radius / 0.85),
                         minimum_image=False)
    spec = spec._replace(verlet_capacity=2 * spec.verlet_capacity, capacity=2 * spec.capacity,
                         max_neighbours=2 * spec.max_neighbours,
                         long_capacity=2 * spec.long_capacity)
    c0 = jnp.asarray(cell0)

    def enthalpy(x):
        deform = jnp.eye(3) + _symmetric(x[n:]) / cell_factor
        r, cell = x[:n] @ deform, c0 @ deform
        nbrs = nl.build(jax.lax.stop_gradient(r), jax.lax.stop_gradient(cell), spec)
        e = jnp.sum(energy_fn(r, cell, nbrs)) + pressure * jnp.abs(jnp.linalg.det(cell))
        return e, nbrs.overflow

    def force_fn(x):
        (h, overflow), g = jax.value_and_grad(enthalpy, has_aux=True)(x)
        return jnp.where(overflow, jnp.nan, h), jnp.where(overflow, jnp.nan, -g)

    x0 = jnp.concatenate([jnp.asarray(positions, jnp.float64), jnp.zeros((3, 3))])
    return CellFilter(force_fn, x0, cell0, cell_factor)
