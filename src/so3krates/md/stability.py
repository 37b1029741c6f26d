"""Stability monitor for MD trajectories, as the literature measures it.

Following Fu et al., "Forces are not enough" (TMLR 2023): a trajectory is *unstable* as soon
as any covalent bond of the start structure deviates by more than 0.5 Å from its start
length (bonds break or atoms collide), or the forces become non-finite or explode.

The bonds are found once on the host (:func:`find_bonds`); the per-step checks
(:func:`max_bond_deviation`, :func:`check_stability`) are pure JAX, jittable and vmappable, so
the engine can evaluate them every step inside ``lax.scan``.
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


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["max_bond_deviation", "max_force"],
    meta_fields=[],
)
@dataclass(frozen=True)
class StabilityCriteria:
    """Thresholds of :func:`check_stability` (a pytree: may be passed into ``jit``).

    Attributes:
        max_bond_deviation: largest allowed ``|d_ij - d_ij(start)|`` of any bond in Å; 0.5 Å
            as in Fu et al. (2023).
        max_force: largest allowed atomic force norm in eV/Å. Deliberately generous (50 eV/Å,
            an order of magnitude above the forces of hot (~1000 K) organic MD): it catches a
            model that diverges (atoms collapsing onto each other), not rare large forces.
    """

    max_bond_deviation: float = 0.5
    max_force: float = 50.0


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
