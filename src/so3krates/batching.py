"""Padded, fixed-shape batches of structures (graphs) for the model.

Every batch is padded to one of a few capacities ``(n_atoms, n_pairs, n_structures)`` so
that jit-compiled functions see only a handful of shapes. Padding atoms have ``Z = 0`` and
belong to a padding structure; padding pairs point at a padding atom and are masked out.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from so3krates.neighbours import NeighbourList, long_range_list, neighbour_list, reverse_halves
from so3krates.neighbours.kspace import kspace_indices, mesh_shape, use_pme


class PairSet(NamedTuple):
    """A second set of pairs (L of them, padded), for the long-range terms (see
    ``so3krates.neighbours.long_range_list``: each pair once); same conventions as the pairs of
    :class:`Graph`.

    Attributes:
        centers, neighbours: atoms ``i`` and ``j`` of each pair, (L,) int32 (padding pairs
            point at the last atom, a padding atom).
        shifts: lattice shifts in cell-vector units, (L, 3).
        mask: True for real pairs, (L,).
    """

    centers: np.ndarray
    neighbours: np.ndarray
    shifts: np.ndarray
    mask: np.ndarray


class KSpace(NamedTuple):
    """The reciprocal-space vectors of an Ewald sum, per structure (see
    ``so3krates.neighbours.kspace``).

    Attributes:
        kvectors: integer indices ``m`` of ``k = 2π m inv(cell)ᵀ``, (S, K, 3) int32; zero rows
            are padding.
        periodic: (S,) True for the 3D-periodic structures (the others have no k-space part).
        mesh: None, or for a particle-mesh Ewald sum of structure 0 (the only periodic one; its
            ``kvectors`` are then empty) an int8 array whose *shape* is the mesh, (n0, n1, n2):
            under ``jit`` a shape is static, so the mesh travels with the graph (its values
            are not used).
    """

    kvectors: np.ndarray
    periodic: np.ndarray
    mesh: np.ndarray | None = None


class Graph(NamedTuple):
    """A padded batch of structures. Shapes use N atoms, P pairs, S structures (padded).

    Attributes:
        positions: Cartesian positions in Å, (N, 3).
        numbers: atomic numbers, 0 for padding atoms, (N,) int32.
        structure: structure index of each atom, (N,) int32.
        centers: atom ``i`` of each pair, (P,) int32 (padding pairs point at the last atom,
            a padding atom). Pairs are sorted by (centre, neighbour), or in the halves layout
            (see :func:`pack`).
        neighbours: atom ``j`` of each pair, (P,) int32.
        shifts: lattice shift of each pair in cell-vector units, (P, 3) float.
        cells: lattice vectors as rows in Å, (S, 3, 3).
        atom_mask: True for real atoms, (N,).
        pair_mask: True for real pairs, (P,).
        structure_mask: True for real structures, (S,).
        charge: total charge of each structure in e, (S,) (None: all neutral).
        spin: unpaired electrons of each structure, (S,) (None: all closed-shell).
        long_range: the pairs of the long-range terms, or None when no term needs them.
        ewald: the k-vectors of the periodic structures' Ewald sums, or None when no
            structure needs one.
    """

    positions: np.ndarray
    numbers: np.ndarray
    structure: np.ndarray
    centers: np.ndarray
    neighbours: np.ndarray
    shifts: np.ndarray
    cells: np.ndarray
    atom_mask: np.ndarray
    pair_mask: np.ndarray
    structure_mask: np.ndarray
    charge: np.ndarray | None = None
    spin: np.ndarray | None = None
    long_range: PairSet | None = None
    ewald: KSpace | None = None


class Labels(NamedTuple):
    """Reference labels for a padded batch (NaN or padding entries are masked).

    Attributes:
        energy: total energies in eV, (S,) float64.
        forces: forces in eV/Å, (N, 3).
        energy_mask: (S,) bool.
        forces_mask: (N, 3) bool.
        stress: stress in eV/Å³, (S, 3, 3), or None for datasets without stress.
        stress_mask: (S, 3, 3) bool (False for structures without a stress label), or None.
        dipole: dipoles in e Å, (S, 3), or None for datasets without dipoles.
        dipole_mask: (S, 3) bool, or None.
        charges: partial charges in e, (N,), or None for datasets without them.
        charges_mask: (N,) bool, or None.
    """

    energy: np.ndarray
    forces: np.ndarray
    energy_mask: np.ndarray
    forces_mask: np.ndarray
    stress: np.ndarray | None = None
    stress_mask: np.ndarray | None = None
    dipole: np.ndarray | None = None
    dipole_mask: np.ndarray | None = None
    charges: np.ndarray | None = None
    charges_mask: np.ndarray | None = None


class Capacity(NamedTuple):
    """Padded sizes of a batch: atoms, pairs and structures (each including one padding),
    long-range pairs (0: none), k-vectors per structure (0: no Ewald sum) and the
    particle-mesh Ewald grid of a single structure (empty: none)."""

    atoms: int
    pairs: int
    structures: int
    long_pairs: int = 0
    kvectors: int = 0
    mesh: tuple[int, ...] = ()


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= n."""
    return int(math.ceil(n / multiple) * multiple)


def bucket_ladder(
    max_atoms: int, max_pairs: int, structures: int, n_buckets: int = 3, ratio: float = 0.6,
    max_long_pairs: int = 0, max_kvectors: int = 0,
) -> list[Capacity]:
    """A few capacities, geometrically spaced below the largest needed batch.

    The largest bucket fits every batch; smaller ones (scaled by ``ratio``) cut the padding
    waste for smaller batches without creating more than ``n_buckets`` compiled shapes.
    """
    ladder = []
    for k in range(n_buckets):
        s = ratio**k
        cap = Capacity(
            atoms=round_up(int(max_atoms * s) + 1, 8),
            # pairs need no padding slot; every padded pair is work in every (P, F) kernel
            pairs=round_up(max(math.ceil(max_pairs * s), 1), 16),
            structures=structures + 1,
            long_pairs=round_up(math.ceil(max_long_pairs * s), 16) if max_long_pairs else 0,
            kvectors=round_up(max_kvectors, 16) if max_kvectors else 0,  # per structure
        )
        if not ladder or cap.atoms < ladder[-1].atoms and cap.pairs < ladder[-1].pairs:
            ladder.append(cap)
    return ladder[::-1]  # smallest first


def choose_capacity(ladder: Sequence[Capacity], n_atoms: int, n_pairs: int,
                    n_long_pairs: int = 0) -> Capacity:
    """The smallest capacity of ``ladder`` that holds ``n_atoms`` real atoms, ``n_pairs`` pairs
    and ``n_long_pairs`` long-range pairs."""
    for cap in ladder:
        if n_atoms < cap.atoms and n_pairs <= cap.pairs and n_long_pairs <= cap.long_pairs:
            return cap
    raise ValueError(
        f"batch with {n_atoms} atoms and {n_pairs} pairs exceeds the largest capacity {ladder[-1]}"
    )


def pack(
    numbers: Sequence[np.ndarray],
    positions: Sequence[np.ndarray],
    cells: np.ndarray,
    neighbour_lists: Sequence[NeighbourList],
    capacity: Capacity,
    dtype=np.float32,
    halves: Sequence[np.ndarray] | None = None,
    charge: np.ndarray | None = None,
    spin: np.ndarray | None = None,
    long_range_lists: Sequence[NeighbourList] | None = None,
    kvectors: Sequence[np.ndarray | None] | None = None,
) -> Graph:
    """Concatenate structures into one padded :class:`Graph` of the given capacity.

    The last atom (index ``capacity.atoms - 1``) and the last structure are padding, so every
    padded array has at least one slot to point at.

    ``halves``: per structure, the pair order of :func:`so3krates.neighbours.reverse_halves`.
    Pairs are then laid out as [first halves, padding, their reverses in the same order,
    padding]: pair ``P/2 + k`` is the reverse of pair ``k``, which the model can be told
    (``pair_halves``, see ``so3krates.potential``). Without it, pairs stay in list order.

    ``charge``, ``spin``: per structure (default 0); ``long_range_lists``: per structure, the
    pairs of the long-range terms (``capacity.long_pairs`` slots), or None; ``kvectors``: per
    structure, its Ewald k-vector indices (None for a structure without an Ewald sum;
    ``capacity.kvectors`` slots each), or None.
    """
    n_struct = len(numbers)
    counts = np.array([len(z) for z in numbers])
    n_atoms = int(counts.sum())
    n_pairs = int(sum(len(nl.centers) for nl in neighbour_lists))
    if n_atoms >= capacity.atoms or n_pairs > capacity.pairs or n_struct >= capacity.structures:
        raise ValueError(
            f"{n_struct} structures, {n_atoms} atoms, {n_pairs} pairs do not fit {capacity}"
        )
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pad_atom = capacity.atoms - 1
    pad_struct = capacity.structures - 1

    pos = np.zeros((capacity.atoms, 3), dtype=dtype)
    z = np.zeros(capacity.atoms, dtype=np.int32)
    structure = np.full(capacity.atoms, pad_struct, dtype=np.int32)
    if n_struct:
        pos[:n_atoms] = np.concatenate(positions)
        z[:n_atoms] = np.concatenate(numbers)
        structure[:n_atoms] = np.repeat(np.arange(n_struct, dtype=np.int32), counts)
    # Padding atoms sit far apart from each other so that no geometry is ever degenerate.
    pos[n_atoms:, 0] = 1000.0 + 10.0 * np.arange(capacity.atoms - n_atoms)

    centers = np.full(capacity.pairs, pad_atom, dtype=np.int32)
    neighbours = np.full(capacity.pairs, pad_atom, dtype=np.int32)
    shifts = np.zeros((capacity.pairs, 3), dtype=dtype)
    pair_mask = np.zeros(capacity.pairs, dtype=bool)
    if n_pairs:
        c = np.concatenate([nl.centers + o for nl, o in zip(neighbour_lists, offsets)])
        j = np.concatenate([nl.neighbours + o for nl, o in zip(neighbour_lists, offsets)])
        s = np.concatenate([nl.shifts for nl in neighbour_lists])
        if halves is None:
            slots = np.arange(n_pairs)
        else:
            order, slots = _halves_layout(neighbour_lists, halves, capacity.pairs)
            c, j, s = c[order], j[order], s[order]
        pair_mask[slots] = True
        centers[slots], neighbours[slots], shifts[slots] = c, j, s
    cell = np.zeros((capacity.structures, 3, 3), dtype=dtype)
    cell[:n_struct] = cells
    electronic = []
    for values in (charge, spin):
        v = np.zeros(capacity.structures, dtype=dtype)
        if values is not None:
            v[:n_struct] = values
        electronic.append(v)
    long_range = None
    if long_range_lists is not None:
        long_range = _pair_set(long_range_lists, offsets, capacity.long_pairs, pad_atom, dtype)
    ewald = None if kvectors is None else _kspace(kvectors, capacity)

    return Graph(
        positions=pos,
        numbers=z,
        structure=structure,
        centers=centers,
        neighbours=neighbours,
        shifts=shifts,
        cells=cell,
        atom_mask=np.arange(capacity.atoms) < n_atoms,
        pair_mask=pair_mask,
        structure_mask=np.arange(capacity.structures) < n_struct,
        charge=electronic[0],
        spin=electronic[1],
        long_range=long_range,
        ewald=ewald,
    )


def _kspace(kvectors: Sequence[np.ndarray | None], capacity: Capacity) -> KSpace:
    """The k-vectors of :func:`pack`, each structure's padded to ``capacity.kvectors``."""
    out = np.zeros((capacity.structures, capacity.kvectors, 3), dtype=np.int32)
    periodic = np.zeros(capacity.structures, dtype=bool)
    for s, m in enumerate(kvectors):
        if m is None:
            continue
        if len(m) > capacity.kvectors:
            raise ValueError(f"{len(m)} k-vectors do not fit {capacity.kvectors} slots")
        out[s, : len(m)] = m
        periodic[s] = True
    return KSpace(out, periodic)


def kspace_vectors(cell: np.ndarray, pbc: np.ndarray, k_cutoff: float | None) -> np.ndarray | None:
    """The Ewald k-vector indices of a structure (``kspace_indices``), or None if it has no
    Ewald sum (``k_cutoff`` None, or not periodic in all three directions)."""
    if k_cutoff is None or not np.all(pbc):
        return None
    return kspace_indices(cell, k_cutoff)


def _pair_set(lists: Sequence[NeighbourList], offsets: np.ndarray, capacity: int, pad_atom: int,
              dtype) -> PairSet:
    """The long-range pairs of :func:`pack`, in list order, padded to ``capacity``."""
    n = int(sum(len(nl.centers) for nl in lists))
    if n > capacity:
        raise ValueError(f"{n} long-range pairs do not fit {capacity} slots")
    centers = np.full(capacity, pad_atom, dtype=np.int32)
    neighbours = np.full(capacity, pad_atom, dtype=np.int32)
    shifts = np.zeros((capacity, 3), dtype=dtype)
    if n:
        centers[:n] = np.concatenate([nl.centers + o for nl, o in zip(lists, offsets)])
        neighbours[:n] = np.concatenate([nl.neighbours + o for nl, o in zip(lists, offsets)])
        shifts[:n] = np.concatenate([nl.shifts for nl in lists])
    return PairSet(centers, neighbours, shifts, np.arange(capacity) < n)


def _halves_layout(neighbour_lists, halves, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, slots)``: the concatenated pairs of ``neighbour_lists`` taken in ``order``
    go to ``slots`` of a pair array of size ``capacity``, in the halves layout of :func:`pack`."""
    n_pairs = sum(len(nl.centers) for nl in neighbour_lists)
    if (capacity - n_pairs) % 2:
        raise ValueError(f"{n_pairs} pairs in {capacity} slots: an odd number of padding pairs "
                         "cannot be split between the halves")
    starts = np.cumsum([0] + [len(nl.centers) for nl in neighbour_lists])
    order = [o + start for o, start in zip(halves, starts)]
    first = np.concatenate([o[: len(o) // 2] for o in order])
    second = np.concatenate([o[len(o) // 2 :] for o in order])
    h = n_pairs // 2
    slots = np.concatenate([np.arange(h), capacity // 2 + np.arange(h)])
    return np.concatenate([first, second]), slots


def pack_labels(
    energy: np.ndarray, forces: Sequence[np.ndarray], capacity: Capacity,
    stress: np.ndarray | None = None, dipole: np.ndarray | None = None,
    charges: Sequence[np.ndarray] | None = None,
) -> Labels:
    """Padded labels matching :func:`pack`; NaN labels and padding are masked. ``stress``:
    (S, 3, 3) eV/Å³, NaN for structures without one (None: no stress labels at all);
    ``dipole`` (S, 3) e Å and ``charges`` (per structure (n_i,), e) likewise."""
    n_struct = len(energy)
    e = np.zeros(capacity.structures, dtype=np.float64)
    e[:n_struct] = energy
    f = np.zeros((capacity.atoms, 3), dtype=np.float64)
    if forces:
        cat = np.concatenate(forces)
        f[: len(cat)] = cat
    e_mask = np.isfinite(e) & (np.arange(capacity.structures) < n_struct)
    f_mask = np.isfinite(f)
    f_mask[sum(len(x) for x in forces):] = False
    s = s_mask = None
    if stress is not None:
        s = np.zeros((capacity.structures, 3, 3), dtype=np.float64)
        s[:n_struct] = stress
        s_mask = np.isfinite(s)
        s = np.where(s_mask, s, 0.0)
    d = d_mask = q = q_mask = None
    if dipole is not None:
        d = np.zeros((capacity.structures, 3), dtype=np.float64)
        d[:n_struct] = dipole
        d_mask = np.isfinite(d)
        d = np.where(d_mask, d, 0.0)
    if charges is not None:
        q = np.full(capacity.atoms, np.nan, dtype=np.float64)
        if len(charges):
            cat = np.concatenate(charges)
            q[: len(cat)] = cat
        q_mask = np.isfinite(q)
        q = np.where(q_mask, q, 0.0)
    return Labels(
        energy=np.where(e_mask, e, 0.0),
        forces=np.where(f_mask, f, 0.0),
        energy_mask=e_mask,
        forces_mask=f_mask,
        stress=s,
        stress_mask=s_mask,
        dipole=d,
        dipole_mask=d_mask,
        charges=q,
        charges_mask=q_mask,
    )


# Pair capacity of a single structure relative to its pair count (see ``single_graph``).
PAIR_HEADROOM = 1.1


def single_graph(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    cutoff: float,
    capacity: Capacity | None = None,
    dtype=np.float32,
    pair_halves: bool = False,
    charge: float = 0.0,
    spin: float = 0.0,
    long_range: bool = False,
    long_range_cutoff: float | None = None,
    kspace_cutoff: float | None = None,
    kspace_method: str = "ewald",
    ewald_alpha: float | None = None,
) -> tuple[Graph, Capacity]:
    """One structure as a :class:`Graph`; the capacity grows (with headroom) only when needed.

    Reusing the returned capacity on the next call keeps the compiled shape while atoms move
    and the pair count fluctuates. ``pair_halves``: pairs in the halves layout of :func:`pack`
    (for ``Model.predict_halves_fn``); otherwise sorted by (centre, neighbour).
    ``charge``, ``spin``: the structure's total charge (e) and unpaired electrons;
    ``long_range``: add the long-range pairs (within ``long_range_cutoff``, or all pairs of a
    molecule when it is None); ``kspace_cutoff`` (1/Å): add the Ewald k-vectors of a
    3D-periodic structure, or with ``kspace_method`` "pme" (or "auto" for a large N·K, see
    ``so3krates.neighbours.kspace.use_pme``) a particle-mesh Ewald grid for the splitting
    parameter ``ewald_alpha`` (1/Å). The grid is kept (grown per axis only when a changed cell
    needs more points), like the other capacities.
    """
    nl = neighbour_list(positions, cell, pbc, cutoff)
    halves = None
    if pair_halves:
        halves = [reverse_halves(nl)]
        if halves[0] is None:  # cannot happen for full lists; guards a changed neighbour_list
            raise ValueError("the neighbour list lacks reverse pairs: no halves layout")
    lr = [long_range_list(positions, cell, pbc, long_range_cutoff)] if long_range else None
    m = kspace_vectors(cell, pbc, kspace_cutoff)
    n, p = len(numbers), len(nl.centers)
    mesh = ()
    if m is not None and use_pme(kspace_method, n, len(m)):
        mesh = mesh_shape(cell, ewald_alpha)
        if capacity is not None and capacity.mesh:
            mesh = tuple(max(a, b) for a, b in zip(mesh, capacity.mesh))
        m = None
    lp = len(lr[0].centers) if lr else 0
    nk = 0 if m is None else len(m)
    if capacity is not None and lp > capacity.long_pairs:
        capacity = capacity._replace(
            long_pairs=round_up(math.ceil(max(lp, capacity.long_pairs) * PAIR_HEADROOM), 16))
    if capacity is not None and nk > capacity.kvectors:  # a cell that grew (NPT, relaxation)
        capacity = capacity._replace(kvectors=round_up(math.ceil(nk * PAIR_HEADROOM), 16))
    if capacity is None or n >= capacity.atoms or p > capacity.pairs:
        # Padding pairs cost as much as real ones, so the headroom is small; a capacity that
        # has to grow grows by at least the headroom, which bounds the recompilations.
        # (at least one slot: a structure without pairs, e.g. atoms far apart, still has a
        # padding pair for the network to index)
        pairs = max(round_up(math.ceil(p * PAIR_HEADROOM), 16), 16)
        if capacity is not None:
            pairs = max(pairs, round_up(math.ceil(capacity.pairs * PAIR_HEADROOM), 16))
        long_pairs = max(round_up(math.ceil(lp * PAIR_HEADROOM), 16), 16) if lr else 0
        kvectors = max(round_up(math.ceil(nk * PAIR_HEADROOM), 16), 16) if nk else 0
        capacity = Capacity(atoms=max(round_up(n + 1, 8), capacity.atoms if capacity else 0),
                            pairs=pairs, structures=2,
                            long_pairs=max(long_pairs, capacity.long_pairs if capacity else 0),
                            kvectors=max(kvectors, capacity.kvectors if capacity else 0))
    capacity = capacity._replace(mesh=mesh)
    graph = pack([numbers], [positions], np.asarray(cell)[None], [nl], capacity, dtype=dtype,
                 halves=halves, charge=[charge], spin=[spin], long_range_lists=lr,
                 kvectors=None if m is None else [m])
    if mesh:
        graph = graph._replace(ewald=KSpace(np.zeros((2, 0, 3), np.int32),
                                            np.array([True, False]), np.zeros(mesh, np.int8)))
    return graph, capacity


class StructureGraphs(NamedTuple):
    """What the batches of some structures are built from, per structure (see
    :func:`structure_graphs`): neighbour lists, their halves orders (None: some list lacks
    reverses), long-range lists (None: no term needs them), Ewald k-vectors (None for a
    structure without an Ewald sum)."""

    neighbour_lists: list[NeighbourList]
    halves: list[np.ndarray] | None
    long_range_lists: list[NeighbourList] | None
    kvectors: list[np.ndarray | None]


def structure_graphs(data, cutoff: float, pair_halves: bool = True, long_range: bool = False,
                     long_range_cutoff: float | None = None,
                     kspace_cutoff: float | None = None) -> StructureGraphs:
    """Neighbour lists within ``cutoff`` Å and the other per-structure inputs of :func:`pack`
    for every structure of ``data`` (a :class:`~so3krates.data.Dataset`)."""
    lists = [neighbour_list(r, c, p, cutoff) for r, c, p in zip(data.positions, data.cells,
                                                                  data.pbc)]
    long_lists = None
    if long_range:  # within ``long_range_cutoff``, or all pairs
        long_lists = [long_range_list(r, c, p, long_range_cutoff)
                      for r, c, p in zip(data.positions, data.cells, data.pbc)]
    kvectors = [kspace_vectors(c, p, kspace_cutoff) for c, p in zip(data.cells, data.pbc)]
    halves = [reverse_halves(nl) for nl in lists] if pair_halves else [None]
    return StructureGraphs(lists, halves if all(h is not None for h in halves) else None,
                           long_lists, kvectors)


def ladder_for(n_atoms: np.ndarray, n_pairs: np.ndarray, batch_size: int, n_buckets: int = 3,
               n_long_pairs: np.ndarray | None = None, max_kvectors: int = 0) -> list[Capacity]:
    """The :func:`bucket_ladder` of a dataset whose structures have ``n_atoms``, ``n_pairs``
    and ``n_long_pairs`` (each (S,)): its largest capacity holds the ``batch_size`` largest
    structures of each count."""
    b = min(batch_size, len(n_atoms))

    def top(counts) -> int:
        return int(np.sort(np.asarray(counts, dtype=np.int64))[::-1][:b].sum())

    return bucket_ladder(top(n_atoms), top(n_pairs), batch_size, n_buckets,
                         max_long_pairs=top(n_long_pairs) if n_long_pairs is not None else 0,
                         max_kvectors=max_kvectors)


def pack_structures(data, indices: Sequence[int], graphs: StructureGraphs, capacity: Capacity,
                    dtype=np.float32, ewald: bool | None = None) -> tuple[Graph, Labels]:
    """Structures ``indices`` of ``data`` (a :class:`~so3krates.data.Dataset`) and their
    ``graphs`` (of all of ``data``'s structures) as a padded graph with labels.

    ``ewald``: give the graph k-vectors (None: if some structure of ``graphs`` has them)."""
    d = data
    idx = np.asarray(indices, dtype=np.int64)
    lrs = graphs.long_range_lists
    if ewald is None:
        ewald = any(m is not None for m in graphs.kvectors)
    graph = pack(
        [d.numbers[k] for k in idx],
        [d.positions[k] for k in idx],
        d.cells[idx],
        [graphs.neighbour_lists[k] for k in idx],
        capacity,
        dtype,
        halves=None if graphs.halves is None else [graphs.halves[k] for k in idx],
        charge=d.charge[idx],
        spin=d.spin[idx],
        long_range_lists=None if lrs is None else [lrs[k] for k in idx],
        kvectors=[graphs.kvectors[k] for k in idx] if ewald else None,
    )
    labels = pack_labels(d.energy[idx], [d.forces[k] for k in idx], capacity,
                         None if d.stress is None else d.stress[idx],
                         None if d.dipole is None else d.dipole[idx],
                         None if d.charges is None else [d.charges[k] for k in idx])
    return graph, labels


class GraphSource:
    """Structures served as padded batches of a few shapes: what training reads.

    Subclasses hold ``batch_size`` and ``ladder`` (the capacities, smallest first) and
    implement ``__len__``, :meth:`capacity_of`, :meth:`batch` and :attr:`pair_halves`;
    :meth:`batches` and :meth:`num_batches` follow. :class:`GraphDataset` keeps everything in
    memory; ``so3krates.streaming.StreamingGraphDataset`` reads structures from disk per batch.
    """

    batch_size: int
    ladder: list[Capacity]

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def pair_halves(self) -> bool:
        """True if the batches come in the halves layout (see :func:`pack`)."""
        raise NotImplementedError

    def capacity_of(self, indices: Sequence[int]) -> Capacity:
        """The capacity of the ladder that :meth:`batch` chooses for structures ``indices``."""
        raise NotImplementedError

    def batch(self, indices: Sequence[int], capacity: Capacity | None = None
              ) -> tuple[Graph, Labels]:
        """Structures ``indices`` (at most ``batch_size``) as a padded graph with labels, padded
        to ``capacity`` (one of the ladder's that holds them; default :meth:`capacity_of`)."""
        raise NotImplementedError

    def batches(self, order: Sequence[int] | None = None, start: int = 0,
                shard: tuple[int, int] = (0, 1)):
        """Yield ``(graph, labels)`` for consecutive chunks of ``order``, from chunk ``start``.

        With ``shard=(rank, size)`` the chunks hold ``size * batch_size`` structures, and of
        each this yields the ``rank``-th ``batch_size`` (fewer, or none, at the end): the share
        of one process of a data-parallel run.
        """
        for indices in self.batch_indices(order, start, shard):
            yield self.batch(indices)

    def batch_indices(self, order: Sequence[int] | None = None, start: int = 0,
                      shard: tuple[int, int] = (0, 1)):
        """The structure indices of each batch of :meth:`batches`, in order."""
        rank, size = shard
        order = np.arange(len(self)) if order is None else np.asarray(order)
        chunk = size * self.batch_size
        for s in range(start * chunk, len(order), chunk):
            lo = s + rank * self.batch_size
            yield order[lo : min(lo + self.batch_size, s + chunk)]

    def num_batches(self, shards: int = 1) -> int:
        """Chunks in an epoch (see :meth:`batches`)."""
        return -(-len(self) // (shards * self.batch_size))


class GraphDataset(GraphSource):
    """A dataset with precomputed neighbour lists, served as padded batches.

    Capacities come from a short ladder (``n_buckets``) sized for the largest possible batch
    of ``batch_size`` structures, so training compiles at most ``n_buckets`` shapes whatever
    the molecule sizes and neighbour counts.

    With ``pair_halves`` (the default), batches come in the halves layout of :func:`pack`
    if every structure's list has all its reverses (full lists do): then the attribute
    ``pair_halves`` is True, and a model evaluating them may be told so
    (``so3krates.potential.make_predict_fn``).
    """

    def __init__(self, data, cutoff: float, batch_size: int, n_buckets: int = 3, dtype=np.float32,
                 pair_halves: bool = True, long_range: bool = False,
                 long_range_cutoff: float | None = None, kspace_cutoff: float | None = None):
        self.data = data
        self.batch_size = batch_size
        self.dtype = dtype
        self._graphs = structure_graphs(data, cutoff, pair_halves, long_range,
                                        long_range_cutoff, kspace_cutoff)
        self.neighbour_lists = self._graphs.neighbour_lists
        # Pairs of the long-range terms (``long_range``): within ``long_range_cutoff``, or all.
        self.long_range_lists = self._graphs.long_range_lists
        # Ewald k-vectors of the 3D-periodic structures (``kspace_cutoff``), if there are any.
        kvectors = self._graphs.kvectors
        self.kvectors = kvectors if any(m is not None for m in kvectors) else None
        self.ladder = ladder_for(
            data.n_atoms, [len(nl.centers) for nl in self.neighbour_lists], batch_size,
            n_buckets, None if self.long_range_lists is None
            else [len(nl.centers) for nl in self.long_range_lists],
            max((len(m) for m in self.kvectors or [] if m is not None), default=0),
        )

    def __len__(self) -> int:
        return len(self.data)

    @property
    def pair_halves(self) -> bool:
        """True if the batches come in the halves layout (see :func:`pack`)."""
        return self._graphs.halves is not None

    def capacity_of(self, indices: Sequence[int]) -> Capacity:
        """The capacity of the ladder that :meth:`batch` chooses for structures ``indices``."""
        lrs = self.long_range_lists or []
        return choose_capacity(self.ladder, int(sum(len(self.data.numbers[k]) for k in indices)),
                               sum(len(self.neighbour_lists[k].centers) for k in indices),
                               sum(len(lrs[k].centers) for k in indices) if lrs else 0)

    def batch(self, indices: Sequence[int], capacity: Capacity | None = None
              ) -> tuple[Graph, Labels]:
        """Structures ``indices`` (at most ``batch_size``) as a padded graph with labels, padded
        to ``capacity`` (one of the ladder's that holds them; default :meth:`capacity_of`)."""
        cap = self.capacity_of(indices) if capacity is None else capacity
        return pack_structures(self.data, indices, self._graphs, cap, self.dtype,
                               ewald=self.kvectors is not None)
