"""Batches of a dataset larger than memory: structures read from disk per batch, neighbour
lists computed per batch, a background thread preparing the next batches.

:class:`StreamingGraphDataset` serves the same batches as
:class:`~so3krates.batching.GraphDataset` (same ladder of capacities from the same counts, same
layout, same values) with memory bounded by a few batches plus an index of a few bytes per
structure. Its data is any object with the reading interface of
``so3krates.data.hdf5.HDF5Dataset`` (``__len__``, ``n_atoms``, ``load(indices)``,
``chunks(size)``, ``pair_counts(cutoff)``).
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, Sequence, TypeVar

import numpy as np

from so3krates.batching import (
    Capacity,
    Graph,
    GraphSource,
    Labels,
    choose_capacity,
    kspace_vectors,
    ladder_for,
    pack_structures,
    structure_graphs,
)
from so3krates.neighbours import long_range_list, neighbour_list

T = TypeVar("T")


def prefetch(items: Iterable[T], size: int = 4) -> Iterator[T]:
    """Iterate over ``items`` in a background thread, up to ``size`` items ahead.

    An exception raised by ``items`` is raised here, at its place in the sequence. Closing
    (or dropping) this iterator stops the thread at its next item. ``size`` 0: no thread.
    """
    if size <= 0:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            result = (done, None)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            result = (done, err)
        while not stop.is_set():
            try:
                buffer.put(result, timeout=0.1)
                return
            except queue.Full:
                continue

    thread = threading.Thread(target=produce, name="so3krates-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = buffer.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        thread.join()


class StreamingGraphDataset(GraphSource):
    """Padded batches of a disk-backed dataset (see the module docstring), for training.

    Arguments as :class:`~so3krates.batching.GraphDataset`, plus ``prefetch`` (batches
    prepared ahead by :meth:`batches` in a background thread; 0: none) and ``chunk_size``
    (structures read at a time by the counting pass).

    The ladder needs every structure's atom and pair counts: the pair counts stored with the
    file for this cutoff (``so3krates convert --cutoff``), else one pass over the structures
    computes them (and always the long-range pair and k-vector counts, when the terms need
    them), keeping only the counts.
    """

    def __init__(self, data, cutoff: float, batch_size: int, n_buckets: int = 3,
                 dtype=np.float32, pair_halves: bool = True, long_range: bool = False,
                 long_range_cutoff: float | None = None, kspace_cutoff: float | None = None,
                 prefetch: int = 4, chunk_size: int = 4096):
        self.data = data
        self.batch_size = batch_size
        self.dtype = dtype
        self.prefetch = prefetch
        self._options = dict(cutoff=cutoff, pair_halves=pair_halves, long_range=long_range,
                             long_range_cutoff=long_range_cutoff, kspace_cutoff=kspace_cutoff)
        self._pair_halves = pair_halves
        self.n_atoms = np.asarray(data.n_atoms, dtype=np.int64)
        self.n_pairs = data.pair_counts(cutoff)
        self.n_long_pairs = None
        n_kvectors = np.full(len(data), -1, dtype=np.int64)  # -1: no Ewald sum
        if self.n_pairs is None or long_range or kspace_cutoff is not None:
            pairs, long_pairs, n_kvectors = _count_pass(data, chunk_size, **self._options)
            if self.n_pairs is None:
                self.n_pairs = pairs
            self.n_long_pairs = long_pairs
        self.ewald = bool((n_kvectors >= 0).any())  # graphs with k-vectors, as GraphDataset
        self.ladder = ladder_for(self.n_atoms, self.n_pairs, batch_size, n_buckets,
                                 self.n_long_pairs, int(n_kvectors.max(initial=0)))

    def __len__(self) -> int:
        return len(self.data)

    @property
    def pair_halves(self) -> bool:
        """True if the batches come in the halves layout (full lists always have it)."""
        return self._pair_halves

    def capacity_of(self, indices: Sequence[int]) -> Capacity:
        """The capacity of the ladder that :meth:`batch` chooses for structures ``indices``
        (from the counts: nothing is read)."""
        idx = np.asarray(indices, dtype=np.int64)
        long_pairs = 0 if self.n_long_pairs is None else int(self.n_long_pairs[idx].sum())
        return choose_capacity(self.ladder, int(self.n_atoms[idx].sum()),
                               int(self.n_pairs[idx].sum()), long_pairs)

    def batch(self, indices: Sequence[int], capacity: Capacity | None = None
              ) -> tuple[Graph, Labels]:
        """Structures ``indices`` read from disk, as a padded graph with labels (as
        :meth:`GraphDataset.batch <so3krates.batching.GraphDataset.batch>`)."""
        idx = np.asarray(indices, dtype=np.int64)
        data = self.data.load(idx)
        graphs = structure_graphs(data, **self._options)
        if self._pair_halves and graphs.halves is None:
            raise ValueError("a neighbour list lacks reverse pairs: no halves layout")
        found = np.array([len(nl.centers) for nl in graphs.neighbour_lists])
        if not np.array_equal(found, self.n_pairs[idx]):
            k = int(idx[np.flatnonzero(found != self.n_pairs[idx])[0]])
            raise ValueError(f"{getattr(self.data, 'source', 'data')}: structure {k} has "
                             f"{found[list(idx).index(k)]} pairs, its stored count says "
                             f"{self.n_pairs[k]}: convert the file again")
        cap = self.capacity_of(idx) if capacity is None else capacity
        return pack_structures(data, np.arange(len(idx)), graphs, cap, self.dtype,
                               ewald=self.ewald)

    def batches(self, order: Sequence[int] | None = None, start: int = 0,
                shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[Graph, Labels]]:
        """As :meth:`GraphSource.batches <so3krates.batching.GraphSource.batches>`, the next
        ``prefetch`` batches read and packed in a background thread."""
        return prefetch(super().batches(order, start, shard), self.prefetch)


def _count_pass(data, chunk_size: int, cutoff: float, pair_halves: bool, long_range: bool,
                long_range_cutoff: float | None, kspace_cutoff: float | None
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Per structure of ``data``: pairs within ``cutoff``, long-range pairs (None without
    ``long_range``) and Ewald k-vectors (-1 without a sum), from one pass over its chunks."""
    n = len(data)
    pairs = np.zeros(n, dtype=np.int64)
    long_pairs = np.zeros(n, dtype=np.int64) if long_range else None
    kvectors = np.full(n, -1, dtype=np.int64)
    for positions, chunk in data.chunks(chunk_size):
        for k, r, c, p in zip(positions, chunk.positions, chunk.cells, chunk.pbc):
            pairs[k] = len(neighbour_list(r, c, p, cutoff).centers)
            if long_range:
                long_pairs[k] = len(long_range_list(r, c, p, long_range_cutoff).centers)
            m = kspace_vectors(c, p, kspace_cutoff)
            kvectors[k] = -1 if m is None else len(m)
    return pairs, long_pairs, kvectors
