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
    """A full (both directions) neighbour list, sorted by ``centers``.

    Attributes:
        centers: index ``i`` of each pair, shape (P,), int32.
        neighbours: index ``j`` of each pair, shape (P,), int32.
        shifts: lattice shift of each pair in units of the cell vectors, shape (P, 3), int32.
    """

    centers: np.ndarray
    neighbours: np.ndarray
    shifts: np.ndarray


def neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float, half: bool = False
) -> NeighbourList:
    """All pairs ``i != j`` (or images of ``i`` itself) with ``|r_ij| < cutoff``; with
    ``half`` each pair once (one of (i, j, S) and (j, i, -S)).

    Args:
        positions: Cartesian positions in Å, shape (n, 3).
        cell: lattice vectors as rows in Å, shape (3, 3); ignored where ``pbc`` is False.
        pbc: periodic directions, shape (3,).
        cutoff: cutoff radius in Å.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    box = np.asarray(cell, dtype=np.float64).reshape(3, 3) if pbc.any() else np.zeros((3, 3))
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=not half)
    i, j, s = calculator.compute(
        points=positions, box=box, periodic=pbc.tolist() if pbc.any() else False, quantities="ijS"
    )
    # Sorted by (centre, neighbour): the model finds each pair's reverse by binary search
    # (``reverse_pair_order``), and batches stay sorted.
    order = np.lexsort((j, i))
    return NeighbourList(
        centers=i[order].astype(np.int32),
        neighbours=j[order].astype(np.int32),
        shifts=s[order].astype(np.int32),
    )


def long_range_list(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
                    cutoff: float | None) -> NeighbourList:
    """The pairs of the long-range terms (electrostatics, dispersion), each pair once (a half
    list: these terms are cheap per pair but have many pairs): those within ``cutoff`` (Å), or
    every pair ``i < j`` of a molecule when ``cutoff`` is None."""
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if cutoff is not None:
        return neighbour_list(positions, cell, pbc, cutoff, half=True)
    if pbc.any():
        raise ValueError("a periodic structure needs a finite long-range cutoff "
                         "(model.long_range_cutoff)")
    n = len(positions)
    i, j = np.divmod(np.arange(n * n, dtype=np.int64), n)
    keep = i < j
    return NeighbourList(i[keep].astype(np.int32), j[keep].astype(np.int32),
                         np.zeros((int(keep.sum()), 3), np.int32))


def reverse_partners(centers, neighbours, shifts, pair_mask, xp=np):
    """Each pair's reverse: ``(partner, found)``, both (P,).

    The reverse of pair (i, j, S) is (j, i, -S); ``partner[k]`` is its index and ``found[k]``
    True if it is one (a distinct real pair that names k back). Sorting the pairs by (i, j, S)
    and by their reverses' keys (j, i, -S) lines them up; O(P log P), any pair order, several
    periodic images of one (i, j) included. ``shifts`` (P, 3) hold integers (any dtype).
    ``xp``: ``numpy`` (host) or ``jax.numpy`` (jittable).
    """
    s = xp.rint(shifts).astype(xp.int32)
    padding = ~pair_mask  # a primary key: real pairs first in both orders
    fwd = xp.lexsort((s[:, 2], s[:, 1], s[:, 0], neighbours, centers, padding))
    rev = xp.lexsort((-s[:, 2], -s[:, 1], -s[:, 0], centers, neighbours, padding))
    partner = rev[xp.argsort(fwd)]  # partner[fwd[k]] = rev[k]
    idx = xp.arange(len(centers))
    found = ((centers[partner] == neighbours) & (neighbours[partner] == centers)
             & xp.all(s[partner] == -s, axis=1) & pair_mask[partner] & (partner != idx)
             & (partner[partner] == idx))
    return partner, found


def reverse_halves(nl: NeighbourList) -> np.ndarray | None:
    """A pair order whose second half holds the reverses of its first half, or None.

    Returns ``order`` (P,) int32, indices into ``nl``: pair ``order[P/2 + k]`` is ``(j, i, -S)``
    for pair ``order[k]`` = ``(i, j, S)``, the first half in the list's own order. None if
    some pair has no reverse (not a full list). The model evaluates functions of the
    distance on the first half only (see ``so3krates.neighbours.pairs``); batches laid out this
    way on the host spare it finding the reverses at every call.
    """
    partner, found = reverse_partners(nl.centers, nl.neighbours, nl.shifts,
                                      np.ones(len(nl.centers), dtype=bool))
    if not found.all():
        return None
    first = np.flatnonzero(np.arange(len(partner)) < partner)
    return np.concatenate([first, partner[first]]).astype(np.int32)  # kept per structure
