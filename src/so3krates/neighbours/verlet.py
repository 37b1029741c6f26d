"""Neighbour lists built inside compiled MD loops (JAX), with a Verlet skin.

The list holds every pair within ``cutoff + skin``; it stays valid until some atom has moved
more than ``skin / 2`` since the build, so it is rebuilt only every few tens of steps. Shapes
are fixed by a :class:`NeighbourSpec` (capacities are static). A build that does not fit sets
``overflow`` instead of dropping pairs silently; the MD engine then re-allocates on the host
(:func:`grow`) and redoes the chunk of steps.

Every step, the pairs actually within ``cutoff`` are selected from that Verlet list into a
second, smaller fixed-size list, which is what the model sees: the skin shell holds ~70 % more
pairs than the cutoff sphere (6 Å vs 5 Å) and every listed pair costs a full model evaluation.

The cell may change between builds (NPT, cell relaxation): the list is rebuilt once the atoms'
moves relative to the homogeneous deformation of the cell since the build, plus that
deformation's effect on the pair vectors, can have brought an unlisted pair within the
cutoff; a cell that shrank or sheared so much that the static set of lattice images (or the
minimum-image convention) no longer covers the list radius sets ``overflow``, and the host
re-allocates with the images of the new cell (:func:`grow`). Pairs are never missed.

Pairs are found by blocked all-pairs search over a fixed set of lattice images: O(N^2 K) work
per build but no per-cell capacity, exact for any cell (triclinic, small cells that need
several images, slabs) and cheap next to a model evaluation up to a few thousand atoms.
Periodic boxes whose plane spacings all exceed twice the list radius use the minimum image,
one candidate per pair. Large systems use cell lists instead (:mod:`so3krates.neighbours.cells`,
``NeighbourSpec.bins``): O(N) work, with a per-bin capacity that grows like the others.

Pair ``(i, j, S)`` means ``r_ij = R_j - R_i + S @ cell`` as in :mod:`so3krates.neighbours`;
the lists are full (both directions) and in the halves layout: pair ``P/2 + k`` is the
reverse of pair ``k`` (padding opposite padding), so that the model evaluates functions of
the distance once per couple without looking for reverses (``pair_halves``, see
``so3krates.neighbours.pairs``). The Verlet list is reordered so at each build; the per-step
selection keeps the layout, as a pair and its reverse have bitwise the same distance.
Padding pairs point at atom index ``N`` (a padding atom that the graph appends).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from so3krates.neighbours import cells, neighbour_list
from so3krates.neighbours.pairs import reverse_pair_order_by_shifts

ROW_BLOCK = 128  # centres per block of the all-pairs search (bounds its temporary memory)
VERLET_HEADROOM = 1.15  # extra headroom of the Verlet list over the model's pair list


class NeighbourSpec(NamedTuple):
    """Static description of a neighbour list (hashable: a jit static argument).

    Attributes:
        cutoff: model cutoff in Å.
        skin: Verlet skin in Å; pairs within ``cutoff + skin`` are kept in the Verlet list.
        capacity: maximum number of pairs within ``cutoff`` (what the model sees; even).
        verlet_capacity: maximum number of pairs within ``cutoff + skin``.
        max_neighbours: maximum neighbours of one atom within ``cutoff + skin``.
        images: lattice images searched, tuple of integer 3-tuples; ``((0, 0, 0),)`` for
            molecules.
        minimum_image: True to use the minimum-image convention instead of ``images``.
        long_cutoff: the long-range terms' cutoff in Å, or None: the Verlet list then covers
            ``max(cutoff, long_cutoff) + skin`` and a second list, of the pairs within
            ``long_cutoff`` each once, is selected from it (``Neighbours.long_range``).
        long_capacity: maximum number of those pairs.
        bins: bins per axis of the cell-list search (:mod:`so3krates.neighbours.cells`), or
            None for the all-pairs search; with bins, ``images`` only records the periodic
            axes (one image along each).
        bin_capacity: maximum number of atoms in one bin.
    """

    cutoff: float
    skin: float
    capacity: int
    verlet_capacity: int
    max_neighbours: int
    images: tuple = ((0, 0, 0),)
    minimum_image: bool = False
    long_cutoff: float | None = None
    long_capacity: int = 0
    bins: tuple | None = None
    bin_capacity: int = 0

    @property
    def radius(self) -> float:
        """The Verlet list's radius in Å: the longest cutoff plus the skin."""
        return max(self.cutoff, self.long_cutoff or 0.0) + self.skin


class VerletList(NamedTuple):
    """All pairs within ``cutoff + skin`` at the last build, in the halves layout.

    Attributes:
        centers: (P_v,) int32; padding pairs hold ``N``.
        neighbours: (P_v,) int32.
        shifts: (P_v, 3) lattice shifts of the pairs, float (same dtype as positions).
        reference: positions at the build, (N, 3) Å (for the displacement test).
        reference_cell: the cell at the build, (3, 3) Å.
        n_pairs: number of real pairs (may exceed P_v on overflow), int32 scalar.
        max_count: largest per-atom neighbour count, int32 scalar.
        image_reach: (3,) int32, the lattice images needed along each axis for the cell of
            the build (``ceil(radius / plane spacing)`` on periodic axes; 0 for molecules).
        images_ok: False if the spec's images (or minimum image) did not cover some build's
            cell (then ``overflow`` too).
        overflow: True if the pairs did not fit: the list is then incomplete.
        fullest_bin: the most atoms in one bin of the cell-list search (0 without bins).
        bins_ok: False if some build's bins were narrower than the list radius (then
            ``overflow`` too).
    """

    centers: jnp.ndarray
    neighbours: jnp.ndarray
    shifts: jnp.ndarray
    reference: jnp.ndarray
    reference_cell: jnp.ndarray
    n_pairs: jnp.ndarray
    max_count: jnp.ndarray
    image_reach: jnp.ndarray
    images_ok: jnp.ndarray
    overflow: jnp.ndarray
    fullest_bin: jnp.ndarray
    bins_ok: jnp.ndarray


class LongPairs(NamedTuple):
    """The pairs within the long-range cutoff, each once (a half list), padded with ``N``.

    Attributes:
        centers, neighbours: (L,) int32; shifts: (L, 3) lattice shifts, float.
        n_pairs: the largest number of such pairs seen (for re-allocation).
    """

    centers: jnp.ndarray
    neighbours: jnp.ndarray
    shifts: jnp.ndarray
    n_pairs: jnp.ndarray


class Neighbours(NamedTuple):
    """The pairs within ``cutoff`` at the current positions, and the Verlet list they come
    from (a pytree that lives in the MD state).

    Attributes:
        centers: (P,) int32, in the halves layout; padding pairs hold ``N``.
        neighbours: (P,) int32.
        shifts: (P, 3) lattice shifts, float.
        n_pairs: the largest number of pairs within the cutoff seen (for re-allocation).
        overflow: True once any list did not fit: results since then are invalid.
        verlet: the :class:`VerletList`.
        long_range: the pairs within ``spec.long_cutoff`` (:class:`LongPairs`), or None.
    """

    centers: jnp.ndarray
    neighbours: jnp.ndarray
    shifts: jnp.ndarray
    n_pairs: jnp.ndarray
    overflow: jnp.ndarray
    verlet: VerletList
    long_range: LongPairs | None = None


def complete_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """The cell with zero vectors of non-periodic directions replaced by unit normals.

    Slabs and wires often come with a zero vector along their open directions; the
    fractional coordinates used for wrapping need an invertible cell.
    """
    cell = np.array(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if not pbc.any():
        return np.zeros((3, 3))
    for k in range(3):
        if not pbc[k] and np.linalg.norm(cell[k]) < 1e-12:
            normal = np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])
            norm = np.linalg.norm(normal)
            cell[k] = normal / norm if norm > 1e-12 else np.eye(3)[k]
    if abs(np.linalg.det(cell)) < 1e-12:
        raise ValueError(f"degenerate cell for pbc={pbc.tolist()}: {cell.tolist()}")
    return cell


def plane_spacings(cell: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of the cell, (3,) Å."""
    cell = np.asarray(cell, dtype=np.float64)
    volume = abs(np.linalg.det(cell))
    return np.array([volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)])


def lattice_images(cell: np.ndarray, pbc: np.ndarray, radius: float) -> tuple:
    """Every lattice shift that can hold a neighbour within ``radius`` of some atom in the cell."""
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if not pbc.any():
        return ((0, 0, 0),)
    spacing = plane_spacings(cell)
    n = [int(math.ceil(radius / spacing[k])) if pbc[k] else 0 for k in range(3)]
    return tuple(itertools.product(*(range(-m, m + 1) for m in n)))


def allocate(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    cutoff: float,
    skin: float,
    headroom: float = 1.1,
    long_cutoff: float | None = None,
    search: str = "auto",
) -> NeighbourSpec:
    """A :class:`NeighbourSpec` sized from the current structure (host side, with ``vesin``).

    Padding pairs cost as much as real ones in the model, so the headroom is modest; an
    overflow later costs one re-run of a chunk. ``long_cutoff``: also select the pairs of the
    long-range terms (see :class:`NeighbourSpec`). ``search``: ``"cells"`` (cell lists),
    ``"all_pairs"``, or ``"auto"``: cell lists where their candidates per atom (27 bins) are
    fewer than a quarter of the atoms.
    """
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    cell = complete_cell(cell, pbc)
    radius = max(cutoff, long_cutoff or 0.0) + skin
    nl = neighbour_list(positions, cell, pbc, radius)
    counts = np.bincount(nl.centers, minlength=len(positions))
    r = positions[nl.neighbours] - positions[nl.centers] + nl.shifts @ cell
    r2 = np.sum(r * r, axis=1)
    n_within = int(np.sum(r2 < cutoff**2))
    n_long = int(np.sum(r2 < long_cutoff**2)) // 2 if long_cutoff else 0
    minimum = bool(pbc.all() and np.all(plane_spacings(cell) > 2 * radius) and _is_orthorhombic(cell))
    images = ((0, 0, 0),) if minimum else lattice_images(cell, pbc, radius)
    n = len(positions)
    most = n * len(images) - 1  # neighbours of one atom, at most (never itself unshifted)
    bins, bin_capacity = _cell_grid(positions, cell, pbc, radius, headroom, search)
    if bins is not None:
        images, minimum = lattice_images(cell, pbc, radius), False
    return NeighbourSpec(
        cutoff=float(cutoff),
        skin=float(skin),
        capacity=min(_pair_capacity(n_within, headroom), _round_even(n * most)),
        # The Verlet list only costs in the per-step selection: more headroom, fewer redos.
        verlet_capacity=min(_pair_capacity(len(nl.centers), VERLET_HEADROOM * headroom),
                            _round_even(n * most)),
        max_neighbours=min(int(counts.max(initial=0) * VERLET_HEADROOM * headroom) + 8, most),
        images=images,
        minimum_image=minimum,
        long_cutoff=None if long_cutoff is None else float(long_cutoff),
        long_capacity=_pair_capacity(n_long, headroom) if long_cutoff else 0,
        bins=bins,
        bin_capacity=bin_capacity,
    )


def _cell_grid(positions, cell, pbc, radius: float, headroom: float, search: str):
    """``(bins, bin_capacity)`` of the cell-list search for this structure, or ``(None, 0)``
    for the all-pairs search (see :func:`allocate`)."""
    if search not in ("auto", "cells", "all_pairs"):
        raise ValueError(f"unknown neighbour search {search!r} (auto, cells, all_pairs)")
    if search == "all_pairs" or len(positions) == 0:
        return None, 0
    bins, capacity = cells.grid_for(positions, cell, pbc, radius, headroom)
    if bins is None and search == "cells":
        raise ValueError(f"cell lists need 3 bins of {radius:g} Å along each periodic axis; "
                         f"this cell is too small")
    if search == "auto" and 27 * capacity * 4 > len(positions):
        return None, 0
    return bins, capacity


def grow(spec: NeighbourSpec, nbrs: Neighbours, headroom: float = 1.15) -> NeighbourSpec:
    """A larger spec after an overflow, sized from what the failed builds saw: pair counts,
    and the lattice images their cells needed (one more along each axis that ran short, so
    that a shrinking or shearing box re-allocates rarely)."""
    v = nbrs.verlet
    if spec.bins is not None:
        if not bool(v.bins_ok):  # bins too narrow now: a new grid for the last build's state
            bins, capacity = cells.grid_for(np.asarray(v.reference), np.asarray(v.reference_cell),
                                            _periodic_axes(spec), spec.radius, 1.0)
            spec = spec._replace(bins=bins, bin_capacity=0 if bins is None else max(
                spec.bin_capacity, capacity))
        if spec.bins is not None:
            spec = spec._replace(bin_capacity=max(spec.bin_capacity,
                                                  int(int(v.fullest_bin) * headroom) + 4))
    if not bool(v.images_ok):
        need = np.asarray(v.image_reach)
        have = (np.zeros(3, int) if spec.minimum_image
                else np.max(np.abs(np.asarray(spec.images)), axis=0))
        reach = np.where(need > have, need + 1, np.maximum(have, need))
        images = itertools.product(*(range(-int(r), int(r) + 1) for r in reach))
        spec = spec._replace(images=tuple(images), minimum_image=False)
    if nbrs.long_range is not None:
        spec = spec._replace(long_capacity=max(
            spec.long_capacity, _pair_capacity(int(nbrs.long_range.n_pairs), headroom)))
    return spec._replace(
        capacity=max(spec.capacity, _pair_capacity(int(nbrs.n_pairs), headroom)),
        verlet_capacity=max(spec.verlet_capacity, _pair_capacity(int(v.n_pairs), headroom)),
        max_neighbours=max(spec.max_neighbours, int(int(v.max_count) * headroom) + 8),
    )


def _pair_capacity(n_pairs: int, headroom: float) -> int:
    return max(int(math.ceil(n_pairs * headroom / 16)) * 16, 16)


def _round_even(n: int) -> int:
    return max(n + n % 2, 2)


def _is_orthorhombic(cell: np.ndarray) -> bool:
    cell = np.asarray(cell, dtype=np.float64)
    return bool(np.allclose(cell, np.diag(np.diag(cell)), atol=1e-12))


def build_verlet(positions: jnp.ndarray, cell: jnp.ndarray, spec: NeighbourSpec) -> VerletList:
    """All pairs within ``cutoff + skin`` (jittable; ``spec`` is static).

    Args:
        positions: (N, 3) Å, need not be wrapped into the cell.
        cell: (3, 3) lattice vectors as rows, Å, invertible when periodic (see
            :func:`complete_cell`; ignored for molecules).
        spec: static capacities and image set.
    """
    n = positions.shape[0]
    dtype = positions.dtype
    radius2 = spec.radius**2
    periodic = spec.minimum_image or spec.images != ((0, 0, 0),)
    if periodic:
        # Search on wrapped positions w = R - n @ cell; the shift returned refers to R.
        frac = positions @ jnp.linalg.inv(cell)
        periodic_axes = np.any(np.asarray(spec.images) != 0, axis=0) | spec.minimum_image
        wrap = jnp.floor(frac) * jnp.asarray(periodic_axes, dtype)
        wrapped = positions - wrap @ cell
    else:
        wrap = jnp.zeros_like(positions)
        wrapped = positions
    images = jnp.asarray(spec.images, dtype=dtype)  # (K, 3)
    offsets = images @ cell if periodic else jnp.zeros_like(images)  # (K, 3)
    m = spec.max_neighbours

    def row_block(rows):
        """Neighbours of centres ``rows`` (B,): (B, m) indices and shifts, (B,) counts."""
        wi = wrapped[jnp.minimum(rows, n - 1)]
        d = wrapped[None, :, None, :] - wi[:, None, None, :] + offsets[None, None, :, :]  # (B,N,K,3)
        shift = jnp.broadcast_to(images, d.shape)
        if spec.minimum_image:
            # The nearest image of each (i, j) in an orthorhombic box: one candidate per pair.
            lengths = jnp.diag(cell)
            s = -jnp.round(d / lengths)
            d, shift = d + s * lengths, shift + s
        r2 = jnp.sum(d * d, axis=-1)  # (B, N, K)
        j = jnp.arange(n, dtype=jnp.int32)[None, :, None]
        self_pair = (j == rows[:, None, None]) & jnp.all(shift == 0, axis=-1)
        mask = (r2 < radius2) & ~self_pair & (rows[:, None, None] < n)
        mask = mask.reshape(rows.shape[0], -1)
        # Stable compaction keeps (neighbour, image) order within a row: the list stays sorted.
        slot = jnp.cumsum(mask, axis=1) - 1
        slot = jnp.where(mask & (slot < m), slot, m)
        cand_j = jnp.broadcast_to(j, r2.shape).reshape(rows.shape[0], -1)
        cand_s = shift.reshape(rows.shape[0], -1, 3)
        b_idx = jnp.arange(rows.shape[0])[:, None]
        out_j = jnp.full((rows.shape[0], m + 1), n, jnp.int32).at[b_idx, slot].set(cand_j)
        out_s = jnp.zeros((rows.shape[0], m + 1, 3), dtype).at[b_idx, slot].set(cand_s)
        return out_j[:, :m], out_s[:, :m], jnp.sum(mask, axis=1)

    fullest, bins_ok = jnp.zeros((), jnp.int32), jnp.ones((), bool)
    if spec.bins is not None:
        axes = _periodic_axes(spec)
        search_cell = cell if axes.any() else jnp.eye(3, dtype=dtype)
        frac = wrapped @ jnp.linalg.inv(search_cell)
        frac = jnp.where(jnp.asarray(axes), frac - jnp.floor(frac), frac)  # rounding at faces
        found = cells.search(wrapped, frac, search_cell, axes, spec.radius, spec.bins,
                             spec.bin_capacity, m)
        nb_j, nb_s, counts = found.neighbours, found.shifts, found.counts
        fullest, bins_ok = found.fullest, found.ok
    else:
        n_blocks = -(-n // ROW_BLOCK)
        rows = jnp.arange(n_blocks * ROW_BLOCK).reshape(n_blocks, ROW_BLOCK)
        nb_j, nb_s, counts = jax.lax.map(row_block, rows)
        nb_j = nb_j.reshape(-1, m)[:n]
        nb_s = nb_s.reshape(-1, m, 3)[:n]
        counts = counts.reshape(-1)[:n]

    # Flatten the per-atom lists into one pair list of fixed capacity, in centre order.
    kept = jnp.minimum(counts, m)
    start = jnp.cumsum(kept) - kept
    slot = jnp.arange(m)[None, :]
    dest = jnp.where(slot < kept[:, None], start[:, None] + slot, spec.verlet_capacity).reshape(-1)
    centers = jnp.full(spec.verlet_capacity, n, jnp.int32).at[dest].set(
        jnp.repeat(jnp.arange(n, dtype=jnp.int32), m), mode="drop"
    )
    neighbours = jnp.full(spec.verlet_capacity, n, jnp.int32).at[dest].set(nb_j.reshape(-1), mode="drop")
    shifts = jnp.zeros((spec.verlet_capacity, 3), dtype).at[dest].set(nb_s.reshape(-1, 3), mode="drop")
    # Undo the wrapping: r_ij = w_j - w_i + S cell = R_j - R_i + (S + n_i - n_j) cell.
    real = centers < n
    ci, cj = jnp.minimum(centers, n - 1), jnp.minimum(neighbours, n - 1)
    shifts = jnp.where(real[:, None], shifts + wrap[ci] - wrap[cj], 0.0)
    # The halves layout (a full list always has it; an overflowing one is redone anyway).
    order, _ = reverse_pair_order_by_shifts(centers, neighbours, shifts, real)
    centers, neighbours, shifts = (a[order] for a in (centers, neighbours, shifts))
    n_pairs = jnp.sum(counts).astype(jnp.int32)
    max_count = jnp.max(counts).astype(jnp.int32)
    covered = images_cover(cell, spec)
    overflow = ((n_pairs > spec.verlet_capacity) | (max_count > m) | ~covered
                | (fullest > spec.bin_capacity) & (spec.bins is not None) | ~bins_ok)
    return VerletList(centers, neighbours, shifts, positions, cell.astype(dtype), n_pairs,
                      max_count, needed_images(cell, spec), covered, overflow, fullest, bins_ok)


def _periodic_axes(spec: NeighbourSpec) -> np.ndarray:
    """(3,) bool: the axes along which ``spec`` searches images (all, for the minimum image)."""
    if spec.minimum_image:
        return np.ones(3, bool)
    return np.any(np.asarray(spec.images) != 0, axis=0)


def needed_images(cell: jnp.ndarray, spec: NeighbourSpec) -> jnp.ndarray:
    """(3,) int32: lattice images needed along each periodic axis of ``spec`` to find every
    pair within ``cutoff + skin`` in ``cell`` (0 elsewhere, and for a cell that is not finite:
    such a state is reported by the stability checks, not re-allocated for)."""
    axes = _periodic_axes(spec)
    if not axes.any():
        return jnp.zeros(3, jnp.int32)  # a molecule
    volume = jnp.abs(jnp.linalg.det(cell))
    normals = jnp.stack([jnp.cross(cell[(k + 1) % 3], cell[(k + 2) % 3]) for k in range(3)])
    spacing = volume / jnp.linalg.norm(normals, axis=1)
    need = jnp.ceil(spec.radius / spacing)
    need = jnp.where(jnp.isfinite(need) & (need < 1e6), need, 0.0)
    return jnp.where(jnp.asarray(axes), need, 0.0).astype(jnp.int32)


def images_cover(cell: jnp.ndarray, spec: NeighbourSpec) -> jnp.ndarray:
    """True (scalar) if ``spec``'s lattice images (or its minimum-image convention) find every
    pair within ``cutoff + skin`` in ``cell``: at least ``radius / spacing`` images along each
    periodic axis; for the minimum image an orthorhombic box wider than twice the radius."""
    if spec.minimum_image:
        off_diagonal = cell - jnp.diag(jnp.diag(cell))
        radius = spec.radius
        return jnp.all(off_diagonal == 0) & jnp.all(jnp.diag(cell) > 2 * radius)
    reach = np.max(np.abs(np.asarray(spec.images)), axis=0)  # (3,) images per axis
    return jnp.all(needed_images(cell, spec) <= jnp.asarray(reach))


def select(positions: jnp.ndarray, cell: jnp.ndarray, verlet: VerletList, spec: NeighbourSpec):
    """The pairs of ``verlet`` within ``cutoff`` now: ``(centers, neighbours, shifts, count)``
    of fixed size ``spec.capacity``, each half compacted into its half (the halves layout)."""
    n = positions.shape[0]
    pos = jnp.concatenate([positions, jnp.zeros((1, 3), positions.dtype)])
    vec = pos[verlet.neighbours] - pos[verlet.centers] + verlet.shifts @ cell
    keep = (verlet.centers < n) & (jnp.sum(vec * vec, axis=-1) < spec.cutoff**2)
    half, cap_half = keep.shape[0] // 2, spec.capacity // 2
    rank = jnp.cumsum(keep.reshape(2, half), axis=1).reshape(-1) - 1
    start = jnp.where(jnp.arange(keep.shape[0]) < half, 0, cap_half)
    dest = jnp.where(keep & (rank < cap_half), start + rank, spec.capacity)
    centers = jnp.full(spec.capacity, n, jnp.int32).at[dest].set(verlet.centers, mode="drop")
    neighbours = jnp.full(spec.capacity, n, jnp.int32).at[dest].set(verlet.neighbours, mode="drop")
    shifts = jnp.zeros((spec.capacity, 3), verlet.shifts.dtype).at[dest].set(verlet.shifts, mode="drop")
    return centers, neighbours, shifts, jnp.sum(keep).astype(jnp.int32)


def build(positions: jnp.ndarray, cell: jnp.ndarray, spec: NeighbourSpec, reference=None,
          reference_cell=None) -> Neighbours:
    """A fresh Verlet list and the pairs within the cutoff at ``positions`` (jittable;
    ``spec`` is static). ``reference``, ``reference_cell``: build the Verlet list there
    instead (positions and cell of an earlier build, to keep its rebuild schedule)."""
    verlet = build_verlet(positions if reference is None else reference,
                          cell if reference_cell is None else reference_cell, spec)
    return _with_selection(positions, cell, verlet, spec)


def select_long(positions: jnp.ndarray, cell: jnp.ndarray, verlet: VerletList,
                spec: NeighbourSpec) -> LongPairs:
    """The pairs of ``verlet`` within ``spec.long_cutoff`` now, each once: the first half of
    the halves layout holds one of each pair and its reverse (self-images included), so the
    selection is a half list, compacted into ``spec.long_capacity`` slots."""
    n = positions.shape[0]
    pos = jnp.concatenate([positions, jnp.zeros((1, 3), positions.dtype)])
    half = verlet.centers.shape[0] // 2
    c, j, s = verlet.centers[:half], verlet.neighbours[:half], verlet.shifts[:half]
    vec = pos[j] - pos[c] + s @ cell
    keep = (c < n) & (jnp.sum(vec * vec, axis=-1) < spec.long_cutoff**2)
    rank = jnp.cumsum(keep) - 1
    dest = jnp.where(keep & (rank < spec.long_capacity), rank, spec.long_capacity)
    cap = spec.long_capacity
    return LongPairs(jnp.full(cap, n, jnp.int32).at[dest].set(c, mode="drop"),
                     jnp.full(cap, n, jnp.int32).at[dest].set(j, mode="drop"),
                     jnp.zeros((cap, 3), s.dtype).at[dest].set(s, mode="drop"),
                     jnp.sum(keep).astype(jnp.int32))


def _with_selection(positions, cell, verlet: VerletList, spec: NeighbourSpec) -> Neighbours:
    centers, neighbours, shifts, count = select(positions, cell, verlet, spec)
    overflow = verlet.overflow | (count > spec.capacity)
    long_range = None
    if spec.long_cutoff is not None:
        long_range = select_long(positions, cell, verlet, spec)
        overflow = overflow | (long_range.n_pairs > spec.long_capacity)
    return Neighbours(centers, neighbours, shifts, count, overflow, verlet, long_range)


def needs_update(positions: jnp.ndarray, cell: jnp.ndarray, nbrs: Neighbours,
                 spec: NeighbourSpec) -> jnp.ndarray:
    """True when an unlisted pair may have come within the cutoff since the Verlet build
    (scalar bool).

    With the cell deformed by ``cell = cell_0 (1 + e)`` and each atom displaced by ``u_i``
    beyond the deformation (``R_i = R0_i (1 + e) + u_i``), a pair vector moves by at most
    ``|r| |e| + |u_i| + |u_j|``: the list (radius ``cutoff + skin``) is still complete while
    ``2 max |u| + (cutoff + skin) |e|_F < skin``. Without a cell change this is the usual
    ``max |u| < skin / 2``.
    """
    v = nbrs.verlet
    if spec.images == ((0, 0, 0),) and not spec.minimum_image:  # a molecule: no cell
        strain = jnp.zeros((3, 3), positions.dtype)
    else:
        strain = jnp.linalg.solve(v.reference_cell, cell) - jnp.eye(3, dtype=positions.dtype)
    d = positions - v.reference - v.reference @ strain
    u = jnp.sqrt(jnp.max(jnp.sum(d * d, axis=-1)))
    e = jnp.sqrt(jnp.sum(strain * strain))
    return 2.0 * u + spec.radius * e > spec.skin


def update(positions: jnp.ndarray, cell: jnp.ndarray, nbrs: Neighbours, spec: NeighbourSpec) -> Neighbours:
    """The pairs within the cutoff at ``positions``, rebuilding the Verlet list if needed.

    Overflow flags and peak counts accumulate, so one check at the end of a chunk suffices.
    """
    verlet = jax.lax.cond(
        needs_update(positions, cell, nbrs, spec),
        lambda: build_verlet(positions, cell, spec),
        lambda: nbrs.verlet,
    )
    verlet = verlet._replace(
        overflow=verlet.overflow | nbrs.verlet.overflow,
        n_pairs=jnp.maximum(verlet.n_pairs, nbrs.verlet.n_pairs),
        max_count=jnp.maximum(verlet.max_count, nbrs.verlet.max_count),
        image_reach=jnp.maximum(verlet.image_reach, nbrs.verlet.image_reach),
        images_ok=verlet.images_ok & nbrs.verlet.images_ok,
        fullest_bin=jnp.maximum(verlet.fullest_bin, nbrs.verlet.fullest_bin),
        bins_ok=verlet.bins_ok & nbrs.verlet.bins_ok,
    )
    new = _with_selection(positions, cell, verlet, spec)
    if new.long_range is not None and nbrs.long_range is not None:
        new = new._replace(long_range=new.long_range._replace(
            n_pairs=jnp.maximum(new.long_range.n_pairs, nbrs.long_range.n_pairs)))
    return new._replace(overflow=new.overflow | nbrs.overflow, n_pairs=jnp.maximum(new.n_pairs, nbrs.n_pairs))
