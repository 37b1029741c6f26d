"""Cell lists for the device neighbour search: O(N) instead of all pairs, for large systems.

Space is divided into a fixed grid of bins (``bins``, static) at least ``radius`` wide along
each axis, so every pair within ``radius`` lies in the same or in adjacent bins, and each
atom's candidates are the atoms of the 27 bins around its own. Bins are laid out in
fractional coordinates of the cell: along a periodic axis the bin width is ``spacing / n``
(``spacing``: the distance between the cell's opposite faces) and bins wrap around with a
lattice shift; along an open axis (molecules, the normal of a slab) the bins span the atoms'
current extent and atoms are never wrapped. A periodic axis needs at least 3 bins (so that
the 3 bins around an atom are distinct and no pair is found twice); an open axis any number.

Every bin holds at most ``capacity`` atoms (static). A build whose bins are too narrow for
the current cell or extent (a shrinking box, a cluster that contracts) or too full reports
it (``ok``, ``fullest``), and the caller re-allocates: pairs are never missed.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

BLOCK = 512  # centres per block of the candidate search (bounds its temporary memory)
OFFSETS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=np.int32)  # (27, 3)


class CellSearch(NamedTuple):
    """Each atom's neighbours within ``radius`` from the cell-list search.

    Attributes:
        neighbours: (N, m) int32 neighbour indices, padded with ``N``.
        shifts: (N, m, 3) lattice shifts relative to the *wrapped* positions, float.
        counts: (N,) int32 neighbours found per atom (may exceed ``m``: then some are lost).
        fullest: int32 scalar, the most atoms in one bin (may exceed ``capacity``).
        ok: bool scalar, False if some bin was narrower than ``radius``.
    """

    neighbours: jnp.ndarray
    shifts: jnp.ndarray
    counts: jnp.ndarray
    fullest: jnp.ndarray
    ok: jnp.ndarray


def grid_shape(fractional: np.ndarray, reciprocal_norms: np.ndarray, periodic: np.ndarray,
               radius: float) -> tuple[int, int, int] | None:
    """The bins per axis for atoms at ``fractional`` coordinates (N, 3), or None where a
    periodic axis cannot hold 3 bins (use the all-pairs search then).

    ``reciprocal_norms``: (3,) lengths of the reciprocal vectors (1 / plane spacing, 1/Å);
    ``periodic``: (3,) bool.
    """
    shape = []
    for k in range(3):
        if periodic[k]:
            n = int(math.floor(1.0 / (radius * reciprocal_norms[k])))
            if n < 3:
                return None
        else:
            extent = float(np.ptp(fractional[:, k])) if len(fractional) else 0.0
            n = max(int(math.floor(extent / (radius * reciprocal_norms[k]))), 1)
        shape.append(n)
    return tuple(shape)


def fullest_bin(fractional: np.ndarray, periodic: np.ndarray, bins: tuple[int, int, int]) -> int:
    """The most atoms in one bin of the grid ``bins`` (host side, for sizing ``capacity``)."""
    ids = np.asarray(_bin_ids(jnp.asarray(fractional), jnp.asarray(periodic), bins)[0])
    return int(np.bincount(ids, minlength=1).max(initial=0))


def grid_for(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, radius: float,
             headroom: float) -> tuple[tuple[int, int, int] | None, int]:
    """``(bins, capacity)`` for a structure (host side): the grid of :func:`grid_shape` and
    ``headroom`` times its fullest bin (plus 4); ``(None, 0)`` where no grid fits.

    Args:
        positions: (N, 3) Å; cell: (3, 3) lattice vectors as rows, Å (completed, see
            ``verlet.complete_cell``; ignored for molecules); pbc: (3,) bool.
    """
    pbc = np.asarray(pbc, dtype=bool)
    search_cell = np.asarray(cell, np.float64) if pbc.any() else np.eye(3)
    frac = np.asarray(positions, np.float64) @ np.linalg.inv(search_cell)
    frac = np.where(pbc, frac - np.floor(frac), frac)
    bins = grid_shape(frac, np.linalg.norm(np.linalg.inv(search_cell), axis=0), pbc, radius)
    if bins is None:
        return None, 0
    return bins, int(fullest_bin(frac, pbc, bins) * headroom) + 4


def _bin_ids(frac: jnp.ndarray, periodic: jnp.ndarray, bins: tuple[int, int, int]):
    """Per-atom bin (N, 3) int32 and flat bin id (N,); fractional coordinates of periodic axes
    must lie in [0, 1). Open axes span the atoms' extent."""
    n_bins = jnp.asarray(bins, jnp.int32)
    lo = jnp.where(periodic, 0.0, jnp.min(frac, axis=0))
    width = jnp.where(periodic, 1.0, jnp.max(frac, axis=0) - lo) / n_bins
    b = jnp.floor((frac - lo) / jnp.where(width > 0, width, 1.0)).astype(jnp.int32)
    b = jnp.clip(b, 0, n_bins - 1)  # rounding at the upper edge (and an open axis's max)
    flat = (b[:, 0] * bins[1] + b[:, 1]) * bins[2] + b[:, 2]
    return flat, b, width


def search(wrapped: jnp.ndarray, frac: jnp.ndarray, cell: jnp.ndarray, periodic: np.ndarray,
           radius: float, bins: tuple[int, int, int], capacity: int, max_neighbours: int
           ) -> CellSearch:
    """Neighbours within ``radius`` of every atom by cell lists (jittable; the grid, the
    capacities and ``periodic`` are static).

    Args:
        wrapped: (N, 3) Å, positions wrapped into the cell along periodic axes.
        frac: (N, 3) their fractional coordinates (in [0, 1) along periodic axes).
        cell: (3, 3) lattice vectors as rows, Å (invertible; rows of open axes any vector
            orthogonal to the others, e.g. from ``verlet.complete_cell``; the identity for
            molecules).
        periodic: (3,) bool, the periodic axes.
        radius: Å; bins: bins per axis; capacity: atoms per bin; max_neighbours: per atom.
    """
    n = wrapped.shape[0]
    dtype = wrapped.dtype
    n_bins = int(np.prod(bins))
    per = jnp.asarray(periodic)
    flat, b, width = _bin_ids(frac, per, bins)
    reciprocal_norms = jnp.linalg.norm(jnp.linalg.inv(cell), axis=0)  # 1 / plane spacing
    ok = jnp.all(width >= radius * reciprocal_norms)

    # The bin table: atoms sorted by bin, each bin's atoms in a row of ``capacity`` slots.
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)
    sorted_ids = flat[order]
    start = jnp.searchsorted(sorted_ids, jnp.arange(n_bins, dtype=flat.dtype))
    count = jnp.bincount(flat, length=n_bins)
    slot = jnp.arange(n, dtype=jnp.int32) - start[sorted_ids].astype(jnp.int32)
    table = jnp.full((n_bins, capacity + 1), n, jnp.int32).at[
        sorted_ids, jnp.minimum(slot, capacity)].set(order)[:, :capacity]
    fullest = jnp.max(count).astype(jnp.int32)

    pos = jnp.concatenate([wrapped, jnp.zeros((1, 3), dtype)])  # padding candidate N
    offsets = jnp.asarray(OFFSETS)
    shape = jnp.asarray(bins, jnp.int32)
    m = max_neighbours

    def block(rows):
        """Neighbours of centres ``rows`` (B,)."""
        i = jnp.minimum(rows, n - 1)
        nb = b[i][:, None, :] + offsets[None]  # (B, 27, 3) neighbouring bins, unwrapped
        image = jnp.floor_divide(nb, shape)  # lattice shift of a bin beyond a periodic face
        inside = jnp.all(per | (image == 0), axis=-1)  # open axes: no bin beyond the atoms
        nb = nb - image * shape
        nb_flat = (nb[..., 0] * bins[1] + nb[..., 1]) * bins[2] + nb[..., 2]
        cand = table[jnp.where(inside, nb_flat, 0)]  # (B, 27, capacity)
        cand = jnp.where(inside[..., None], cand, n)
        shift = jnp.where(per, image, 0).astype(dtype)  # (B, 27, 3)
        d = pos[cand] - pos[i][:, None, None, :] + (shift @ cell)[:, :, None, :]
        r2 = jnp.sum(d * d, axis=-1)  # (B, 27, capacity)
        self_pair = (cand == rows[:, None, None]) & jnp.all(shift == 0, axis=-1)[..., None]
        mask = (r2 < radius**2) & (cand < n) & ~self_pair & (rows[:, None, None] < n)
        mask = mask.reshape(rows.shape[0], -1)
        cand = cand.reshape(rows.shape[0], -1)
        cand_s = jnp.broadcast_to(shift[:, :, None, :], (*r2.shape, 3)).reshape(rows.shape[0], -1, 3)
        # Compaction in candidate order (the Verlet build puts the list in its layout later).
        out = jnp.cumsum(mask, axis=1) - 1
        out = jnp.where(mask & (out < m), out, m)
        row_idx = jnp.arange(rows.shape[0])[:, None]
        out_j = jnp.full((rows.shape[0], m + 1), n, jnp.int32).at[row_idx, out].set(cand)
        out_s = jnp.zeros((rows.shape[0], m + 1, 3), dtype).at[row_idx, out].set(cand_s)
        return out_j[:, :m], out_s[:, :m], jnp.sum(mask, axis=1).astype(jnp.int32)

    n_blocks = -(-n // BLOCK)
    rows = jnp.arange(n_blocks * BLOCK, dtype=jnp.int32).reshape(n_blocks, BLOCK)
    nb_j, nb_s, counts = jax.lax.map(block, rows)
    return CellSearch(nb_j.reshape(-1, m)[:n], nb_s.reshape(-1, m, 3)[:n],
                      counts.reshape(-1)[:n], fullest, ok)
