"""Stability monitor for MD trajectories: when a run has failed.

Two criteria, chosen by the structure (``StabilityCriteria.mode``):

- ``bonds``, for molecules (the default without periodic directions): as Fu et al., "Forces
  are not enough" (TMLR 2023), a trajectory is *unstable* as soon as any covalent bond of the
  start structure deviates by more than 0.5 Å from its start length (bonds break or atoms
  collide). The literature's measure: results stay comparable.
- ``collapse``, for crystals, surfaces and liquids (the default with periodic directions),
  where bonds legitimately break and re-form (diffusion, melting): unstable when two atoms
  come closer than ``min_distance_factor`` (0.5) times the sum of their covalent radii (the
  model lets atoms fall onto each other), or the kinetic temperature exceeds
  ``max_temperature_factor`` (3) times the run's temperature (the model pours energy into
  the motion: an explosion).

Both also stop at non-finite positions or forces and at forces above ``max_force``.

The reference data are prepared once on the host (:func:`find_bonds`, :class:`Monitor`);
the per-frame checks (:func:`check_stability`, :func:`check_collapse`) are pure JAX,
jittable and vmappable, so the engine evaluates them inside its ``lax.scan``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import covalent_radii

from so3krates.neighbours import neighbour_list


class Bonds(NamedTuple):
    """Bonded pairs of the start structure; a pytree, so it can be passed through ``jit``.

    A bond ``(i, j, S)`` has the vector ``r_ij = R_j - R_i + S @ cell`` (as in
    :mod:`so3krates.neighbours`). Each bond appears once.

    Attributes:
        pairs: atom indices ``(i, j)`` of each bond, shape (M, 2), int32.
        shifts: lattice shift of ``j`` in units of the cell vectors, shape (M, 3), int32.
        reference: bond length in the start structure in Å, shape (M,), float64.
    """

    pairs: jnp.ndarray
    shifts: jnp.ndarray
    reference: jnp.ndarray


def find_bonds(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray | None = None,
    pbc: np.ndarray | bool | None = None,
    scale: float = 1.25,
) -> Bonds:
    """Covalent bonds: pairs with ``d_ij < scale * (r_cov(Z_i) + r_cov(Z_j))``.

    Runs on the host (numpy + vesin), once per trajectory. Periodic images are included, so a
    bond across the cell boundary (or to an image of the same atom) is found too.

    Args:
        numbers: atomic numbers, shape (N,).
        positions: Cartesian positions in Å, shape (N, 3).
        cell: lattice vectors as rows in Å, shape (3, 3); None for a molecule.
        pbc: periodic directions, shape (3,) or a bool; default: periodic in all directions
            when a cell is given, else not periodic.
        scale: tolerance factor on the sum of covalent radii (``ase.data.covalent_radii``);
            1.25 is a common choice that separates first from second neighbours.

    Returns:
        The bonds, each once: ``i < j``, or for a bond to an image of the same atom the shift
        whose first non-zero component is positive.
    """
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if pbc is None:
        pbc = cell is not None
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64).reshape(3, 3)
    radii = covalent_radii[numbers]
    if len(numbers) == 0:
        return _bonds_from(np.zeros((0, 2)), np.zeros((0, 3)), np.zeros(0))
    cutoff = scale * 2.0 * float(radii.max())
    nl = neighbour_list(positions, cell, pbc, cutoff)
    i, j, s = nl.centers, nl.neighbours, nl.shifts
    # The full list holds every bond twice, (i, j, S) and (j, i, -S): keep one of them.
    first_nonzero = np.take_along_axis(s, np.argmax(s != 0, axis=1)[:, None], axis=1)[:, 0]
    keep = (i < j) | ((i == j) & (first_nonzero > 0))
    i, j, s = i[keep], j[keep], s[keep]
    d = np.linalg.norm(positions[j] - positions[i] + s @ cell, axis=1)  # S = 0 where not periodic
    bonded = d < scale * (radii[i] + radii[j])
    return _bonds_from(np.stack([i[bonded], j[bonded]], axis=1), s[bonded], d[bonded])


def _bonds_from(pairs: np.ndarray, shifts: np.ndarray, reference: np.ndarray) -> Bonds:
    return Bonds(
        pairs=jnp.asarray(np.asarray(pairs, dtype=np.int32).reshape(-1, 2)),
        shifts=jnp.asarray(np.asarray(shifts, dtype=np.int32).reshape(-1, 3)),
        reference=jnp.asarray(np.asarray(reference, dtype=np.float64).reshape(-1)),
    )


MODES = ("auto", "bonds", "collapse")


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["max_bond_deviation", "max_force", "min_distance_factor", "max_temperature_factor"],
    meta_fields=["mode"],
)
@dataclass(frozen=True)
class StabilityCriteria:
    """Thresholds of the monitor (a pytree: the numbers may be passed into ``jit``).

    Attributes:
        max_bond_deviation: ``bonds``: largest allowed ``|d_ij - d_ij(start)|`` of any bond
            in Å; 0.5 Å as in Fu et al. (2023).
        max_force: largest allowed atomic force norm in eV/Å (both criteria). Deliberately
            generous (50 eV/Å, an order of magnitude above the forces of hot (~1000 K)
            organic MD): it catches a model that diverges, not rare large forces.
        min_distance_factor: ``collapse``: smallest allowed distance of any pair as a
            fraction of the sum of the two covalent radii (``ase.data.covalent_radii``).
            0.5: in sane hot and molten crystals the closest pairs were measured at 0.66 or
            more (EMT Cu at 3000 K, 256 atoms, 10 ps; other EMT metals at 2000-3500 K 0.74
            or more; Si 0.83 or more up to 4000 K, Stillinger–Weber and a trained model);
            a model with a hole lets a pair fall below it (Si: within 0.15 ps at 1200 K).
        max_temperature_factor: ``collapse``: largest allowed kinetic temperature as a
            multiple of the run's reference temperature (see :func:`temperature_limit`;
            ``inf`` switches this check off). 3: sane runs of 64-256 atoms peaked at 1.4
            times their temperature; an integration that explodes passes 3 within a few
            steps.
        mode: ``"auto"`` (``bonds`` without periodic directions, else ``collapse``),
            ``"bonds"`` or ``"collapse"``; static.
    """

    max_bond_deviation: float = 0.5
    max_force: float = 50.0
    min_distance_factor: float = 0.5
    max_temperature_factor: float = 3.0
    mode: str = "auto"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown stability monitor {self.mode!r}; choose one of {MODES}")

    def resolve(self, pbc) -> str:
        """The criterion used for a structure with periodic directions ``pbc``: ``"bonds"``
        or ``"collapse"``."""
        if self.mode != "auto":
            return self.mode
        return "collapse" if bool(np.any(pbc)) else "bonds"


def bond_lengths(positions: jnp.ndarray, cell: jnp.ndarray, bonds: Bonds) -> jnp.ndarray:
    """Current bond lengths in Å, shape (M,).

    Args:
        positions: positions in Å, shape (N, 3).
        cell: lattice vectors as rows in Å, shape (3, 3) (zeros for a molecule: the shifts of a
            molecule's bonds are zero anyway).
        bonds: from :func:`find_bonds`.
    """
    i, j = bonds.pairs[:, 0], bonds.pairs[:, 1]
    r = positions[j] - positions[i] + bonds.shifts.astype(positions.dtype) @ cell.astype(positions.dtype)
    return jnp.linalg.norm(r, axis=-1)


def max_bond_deviation(positions: jnp.ndarray, cell: jnp.ndarray, bonds: Bonds) -> jnp.ndarray:
    """Largest ``|d_ij - d_ij(start)|`` over all bonds in Å, a scalar (0 without bonds).

    NaN positions give NaN (so a comparison ``<= threshold`` fails, as it should).

    Args:
        positions: positions in Å, shape (N, 3).
        cell: lattice vectors as rows in Å, shape (3, 3).
        bonds: from :func:`find_bonds`.
    """
    deviation = jnp.abs(bond_lengths(positions, cell, bonds) - bonds.reference.astype(positions.dtype))
    # ``initial`` makes the reduction defined for zero bonds (a noble gas, an ion in a box).
    return jnp.max(deviation, initial=0.0)


def check_stability(
    positions: jnp.ndarray,
    forces: jnp.ndarray,
    cell: jnp.ndarray,
    bonds: Bonds,
    criteria: StabilityCriteria = StabilityCriteria(),
) -> jnp.ndarray:
    """Whether one MD frame is still stable: a boolean scalar, True = stable.

    Unstable when any bond deviates from its start length by more than
    ``criteria.max_bond_deviation``, when any position or force is not finite, or when any
    atomic force norm exceeds ``criteria.max_force``. Padding atoms (zero forces, any bonds
    excluded from ``bonds``) never make a frame unstable.

    Args:
        positions: positions in Å, shape (N, 3).
        forces: forces in eV/Å, shape (N, 3).
        cell: lattice vectors as rows in Å, shape (3, 3).
        bonds: from :func:`find_bonds` on the start structure.
        criteria: thresholds.
    """
    finite = jnp.all(jnp.isfinite(positions)) & jnp.all(jnp.isfinite(forces))
    force_ok = jnp.max(jnp.linalg.norm(forces, axis=-1), initial=0.0) <= criteria.max_force
    bonds_ok = max_bond_deviation(positions, cell, bonds) <= criteria.max_bond_deviation
    return finite & force_ok & bonds_ok


def min_distance_ratio(positions: jnp.ndarray, cell: jnp.ndarray, pairs, radii: jnp.ndarray,
                       halves: bool = False) -> jnp.ndarray:
    """Smallest ``d_ij / (r_cov(i) + r_cov(j))`` over the listed pairs, a scalar (inf without
    pairs; NaN positions give NaN).

    Args:
        positions: positions in Å, shape (N, 3).
        cell: lattice vectors as rows in Å, shape (3, 3).
        pairs: anything with ``centers`` (P,), ``neighbours`` (P,) and ``shifts`` (P, 3)
            in the convention of :mod:`so3krates.neighbours` (``r_ij = R_j - R_i + S @
            cell``), e.g. the engine's in-loop :class:`~so3krates.neighbours.verlet.Neighbours`
            (every pair closer than the cutoff); padding pairs hold index N.
        radii: covalent radii of the atoms in Å, shape (N,).
        halves: the pairs are in the halves layout (pair ``P/2 + k`` is the reverse of pair
            ``k``, as in the engine's lists): only the first half is read.
    """
    n, dtype = positions.shape[0], positions.dtype
    centers, neighbours, shifts = pairs.centers, pairs.neighbours, pairs.shifts
    if halves:
        h = centers.shape[0] // 2
        centers, neighbours, shifts = centers[:h], neighbours[:h], shifts[:h]
    real = (centers < n) & (neighbours < n)
    # Padding pairs point at a padding atom (index N) appended here, then are masked.
    x = jnp.concatenate([positions, jnp.zeros((1, 3), dtype)])
    r_cov = jnp.concatenate([radii.astype(dtype), jnp.ones(1, dtype)])
    r = x[neighbours] - x[centers] + shifts.astype(dtype) @ cell.astype(dtype)
    q = jnp.sum(r * r, axis=-1) / (r_cov[centers] + r_cov[neighbours]) ** 2
    return jnp.sqrt(jnp.min(jnp.where(real, q, jnp.inf), initial=jnp.inf))


def check_collapse(
    positions: jnp.ndarray,
    forces: jnp.ndarray,
    cell: jnp.ndarray,
    pairs,
    radii: jnp.ndarray,
    temperature: jnp.ndarray,
    max_temperature: jnp.ndarray | float,
    criteria: StabilityCriteria = StabilityCriteria(),
    halves: bool = False,
) -> jnp.ndarray:
    """Whether one MD frame of a crystal or liquid is still stable: a boolean scalar.

    Unstable when two atoms are closer than ``criteria.min_distance_factor`` times the sum of
    their covalent radii, when the kinetic temperature exceeds ``max_temperature`` (from
    :func:`temperature_limit`), when any position or force is not finite, or when any atomic
    force norm exceeds ``criteria.max_force``. Bonds may break and re-form.

    Args:
        positions: positions in Å, shape (N, 3).
        forces: forces in eV/Å, shape (N, 3).
        cell: lattice vectors as rows in Å, shape (3, 3).
        pairs: the pairs to check (see :func:`min_distance_ratio`): the model's neighbour
            list holds every pair closer than its cutoff.
        radii: covalent radii in Å, shape (N,).
        temperature: kinetic temperature in K, a scalar.
        max_temperature: the limit in K (inf: no limit).
        criteria: thresholds.
        halves: the pairs are in the halves layout (see :func:`min_distance_ratio`).
    """
    finite = jnp.all(jnp.isfinite(positions)) & jnp.all(jnp.isfinite(forces))
    force_ok = jnp.max(jnp.linalg.norm(forces, axis=-1), initial=0.0) <= criteria.max_force
    apart = min_distance_ratio(positions, cell, pairs, radii, halves) >= criteria.min_distance_factor
    cool = temperature <= max_temperature
    return finite & force_ok & apart & cool


def temperature_limit(factor: float, reference: float, degrees_of_freedom: int,
                      false_alarm: float = 1e-9) -> float:
    """The kinetic temperature in K above which a run counts as exploding.

    ``factor`` times ``reference`` (the run's temperature); for small systems at least the
    temperature that a thermalised system's kinetic energy (a chi-squared variable with
    ``degrees_of_freedom``) exceeds with probability ``false_alarm`` per frame, so that the
    fluctuations of a few-atom cell are never taken for an explosion. ``inf`` (no limit)
    when ``reference`` is not above 0 or ``factor`` is inf.
    """
    from scipy.stats import chi2

    if not (reference > 0 and np.isfinite(factor)):
        return float("inf")
    fluctuation = float(chi2.isf(false_alarm, degrees_of_freedom)) / degrees_of_freedom
    return float(reference) * max(float(factor), fluctuation)


class Monitor:
    """The monitor of one run: criteria resolved for the structure and reference data
    prepared on the host; calling it is pure JAX (the engine calls it inside ``lax.scan``).

    Args:
        criteria: the thresholds and mode.
        numbers: atomic numbers, shape (N,).
        positions: start positions in Å, shape (N, 3) (the bonds' start lengths).
        cell: lattice vectors as rows in Å, shape (3, 3).
        pbc: periodic directions, shape (3,).
        reference_temperature: the run's temperature in K (the engine takes the larger of
            the target and the start velocities' temperature).
        degrees_of_freedom: of the kinetic temperature.

    Attributes:
        mode: ``"bonds"`` or ``"collapse"``.
        bonds: the start structure's bonds (``bonds`` mode), else None.
        radii: covalent radii in Å, shape (N,).
        max_temperature: the temperature limit in K (``collapse`` mode; inf in ``bonds``).
    """

    def __init__(self, criteria: StabilityCriteria, numbers, positions, cell, pbc,
                 reference_temperature: float = 0.0, degrees_of_freedom: int = 1):
        self.criteria = criteria
        self.mode = criteria.resolve(pbc)
        numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        self.radii = jnp.asarray(covalent_radii[numbers], jnp.float64)
        self.bonds = find_bonds(numbers, positions, cell, pbc) if self.mode == "bonds" else None
        self.max_temperature = (
            temperature_limit(criteria.max_temperature_factor, reference_temperature,
                              degrees_of_freedom)
            if self.mode == "collapse" else float("inf")
        )

    def __call__(self, positions, forces, cell, pairs, temperature) -> jnp.ndarray:
        """True while the frame is stable (jittable). ``pairs``: the engine's in-loop
        neighbours (halves layout, see :func:`min_distance_ratio`)."""
        if self.mode == "bonds":
            return check_stability(positions, forces, cell, self.bonds, self.criteria)
        return check_collapse(positions, forces, cell, pairs, self.radii, temperature,
                              self.max_temperature, self.criteria, halves=True)

    def diagnose(self, positions, forces, cell, pairs, temperature) -> str | None:
        """Why a frame is unstable, in words, or None if it is stable (host; for the report
        after a run stopped)."""
        c = self.criteria
        positions, forces = np.asarray(positions), np.asarray(forces)
        if not (np.isfinite(positions).all() and np.isfinite(forces).all()):
            return "non-finite positions or forces"
        force = float(np.max(np.linalg.norm(forces, axis=-1), initial=0.0))
        if force > c.max_force:
            return f"a force of {force:.1f} eV/Å (> {c.max_force:g} eV/Å)"
        if self.mode == "bonds":
            dev = float(max_bond_deviation(jnp.asarray(positions), jnp.asarray(cell), self.bonds))
            if dev > c.max_bond_deviation:
                return f"a bond {dev:.2f} Å off its start length (> {c.max_bond_deviation:g} Å)"
            return None
        ratio = float(min_distance_ratio(jnp.asarray(positions), jnp.asarray(cell), pairs,
                                         self.radii, halves=True))
        if not ratio >= c.min_distance_factor:
            return (f"collapse: two atoms at {ratio:.2f} times the sum of their covalent radii "
                    f"(< {c.min_distance_factor:g})")
        if not float(temperature) <= self.max_temperature:
            return f"temperature {float(temperature):.0f} K (> {self.max_temperature:.0f} K)"
        return None
