"""Neighbour lists with lattice shifts, computed on the host with ``vesin``.

A pair ``(i, j, S)`` means atom ``j`` seen from atom ``i`` through the periodic image
``S`` (integer multiples of the lattice vectors): ``r_ij = R_j - R_i + S @ cell``.
Molecules are the special case ``S = 0``; both go through the same code.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import vesin


class NeighbourList(NamedTuple):
    """A full (both directions) neighbour list in couple order.

    Each pair (i, j, S) has its reverse (j, i, -S) in the list. The first half holds one pair
    of every couple (i < j, or i == j with S > 0 lexicographically), sorted by (i, j, S); the
    second half holds their reverses in the same order. The model then evaluates the filters
    (functions of the distance) once per couple without searching for reverses.

    Attributes:
        centers: index ``i`` of each pair, shape (P,), int32.
        neighbors: index ``j`` of each pair, shape (P,), int32.
        shifts: lattice shift of each pair in units of the cell vectors, shape (P, 3), int32.
    """

    centers: np.ndarray
    neighbors: np.ndarray
    shifts: np.ndarray


def neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> NeighbourList:
    """All pairs ``i != j`` (or images of ``i`` itself) with ``|r_ij| < cutoff``.

    Args:
        positions: Cartesian positions in Å, shape (n, 3).
        cell: lattice vectors as rows in Å, shape (3, 3); ignored where ``pbc`` is False.
        pbc: periodic directions, shape (3,).
        cutoff: cutoff radius in Å.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    box = np.asarray(cell, dtype=np.float64).reshape(3, 3) if pbc.any() else np.zeros((3, 3))
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s = calculator.compute(
        points=positions, box=box, periodic=pbc.tolist() if pbc.any() else False, quantities="ijS"
    )
    order = couple_order(i, j, s)
    return NeighbourList(
        centers=i[order].astype(np.int32),
        neighbors=j[order].astype(np.int32),
        shifts=s[order].astype(np.int32),
    )


def couple_order(i: np.ndarray, j: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Permutation putting a full pair list in couple order (see :class:`NeighbourList`).

    Args: centres ``i`` (P,), neighbours ``j`` (P,), integer shifts ``s`` (P, 3).
    Raises ValueError if some pair has no reverse (not a full list).
    """
    i, j, s = np.asarray(i), np.asarray(j), np.asarray(s).reshape(-1, 3)
    positive = (s[:, 0] > 0) | (s[:, 0] == 0) & ((s[:, 1] > 0) | (s[:, 1] == 0) & (s[:, 2] > 0))
    first = np.flatnonzero((i < j) | (i == j) & positive)
    second = np.setdiff1d(np.arange(len(i)), first)
    # Sorting the reverses by their reversed key lines them up with the first members.
    first = first[np.lexsort((s[first, 2], s[first, 1], s[first, 0], j[first], i[first]))]
    second = second[np.lexsort((-s[second, 2], -s[second, 1], -s[second, 0], i[second], j[second]))]
    if not (len(first) == len(second)
            and np.array_equal(i[first], j[second]) and np.array_equal(j[first], i[second])
            and np.array_equal(s[first], -s[second])):
        raise ValueError("not a full neighbour list: some pair (i, j, S) lacks its reverse (j, i, -S)")
    return np.concatenate([first, second])
