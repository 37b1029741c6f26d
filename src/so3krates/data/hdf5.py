"""Datasets larger than memory: an indexed HDF5 file of labelled structures (``so3krates
convert`` writes it) and a disk-backed dataset that reads structures from it on demand.

Layout (format `so3krates-dataset`, version 1; every array in ASE units, each with a
`unit` attribute). `A`: all atoms of all `S` structures; structure `k`'s atoms are rows
`offsets[k]:offsets[k + 1]` of the per-atom arrays.

| array | shape | dtype | what |
| --- | --- | --- | --- |
| `offsets` | (S + 1,) | int64 | first atom of each structure, then `A` |
| `numbers` | (A,) | uint8 | atomic numbers |
| `positions` | (A, 3) | float64 | Å |
| `forces` | (A, 3) | float64 | eV/Å, NaN where missing |
| `charges` | (A,) | float64 | partial charges, e (only if some structure has them) |
| `energy` | (S,) | float64 | eV, NaN where missing |
| `cells` | (S, 3, 3) | float64 | lattice vectors as rows, Å (zeros for molecules) |
| `pbc` | (S, 3) | bool | periodic directions |
| `charge` | (S,) | float64 | total charge, e |
| `spin` | (S,) | float64 | unpaired electrons |
| `stress` | (S, 3, 3) | float64 | eV/Å³, NaN where missing (only if some structure has one) |
| `dipole` | (S, 3) | float64 | e Å, NaN where missing (only if some structure has one) |
| `pair_counts` | (S,) | int32 | pairs within the `cutoff` attribute (Å), if asked for |

Root attributes: `format`, `version`, `source` (the file converted), `options` (the
reading options, JSON), `n_structures`, `n_atoms`, `elements`, `energy_unit`,
`length_unit`. Arrays are chunked (`CHUNK_ROWS` rows) and uncompressed, so that reading a
few random structures costs a few small reads.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from so3krates.data.dataset import DataError, Dataset

FORMAT = "so3krates-dataset"
VERSION = 1
SUFFIXES = (".h5", ".hdf5")
CHUNK_ROWS = 4096  # rows per HDF5 chunk: ~100 kB of positions
# name: (unit, per-atom?, trailing shape, dtype, fill of structures without the label)
ARRAYS = {
    "numbers": ("", True, (), np.uint8, 0),
    "positions": ("Angstrom", True, (3,), np.float64, np.nan),
    "forces": ("eV/Angstrom", True, (3,), np.float64, np.nan),
    "charges": ("e", True, (), np.float64, np.nan),
    "energy": ("eV", False, (), np.float64, np.nan),
    "cells": ("Angstrom", False, (3, 3), np.float64, 0.0),
    "pbc": ("", False, (3,), bool, False),
    "charge": ("e", False, (), np.float64, 0.0),
    "spin": ("unpaired electrons", False, (), np.float64, 0.0),
    "stress": ("eV/Angstrom^3", False, (3, 3), np.float64, np.nan),
    "dipole": ("e*Angstrom", False, (3,), np.float64, np.nan),
}
OPTIONAL = ("charges", "stress", "dipole")


def is_hdf5_path(path: str | os.PathLike, format: str | None = None) -> bool:
    """True if ``path`` names a dataset file of this format (by ``format``, else its suffix)."""
    if format is not None:
        return format.lower() in ("h5", "hdf5")
    return Path(path).suffix.lower() in SUFFIXES


def _columns(data: Dataset) -> dict[str, np.ndarray]:
    """The arrays of ``data`` as stored (per-atom ones concatenated), absent labels left out."""
    cols = {
        "numbers": np.concatenate(data.numbers).astype(np.uint8),
        "positions": np.concatenate(data.positions).astype(np.float64),
        "forces": np.concatenate(data.forces).astype(np.float64),
        "energy": np.asarray(data.energy, np.float64),
        "cells": np.asarray(data.cells, np.float64),
        "pbc": np.asarray(data.pbc, bool),
        "charge": np.asarray(data.charge, np.float64),
        "spin": np.asarray(data.spin, np.float64),
    }
    if data.charges is not None:
        cols["charges"] = np.concatenate(data.charges).astype(np.float64)
    for name in ("stress", "dipole"):
        if getattr(data, name) is not None:
            cols[name] = np.asarray(getattr(data, name), np.float64)
    return cols


class HDF5Writer:
    """Appends validated datasets (chunks of one file) to an open, empty ``h5py.File``.

    An optional label that appears only in a later chunk gets its array then, with the
    structures before marked as unlabelled (NaN), in bounded blocks. ``cutoff`` (Å): also
    store each structure's pair count within it (``pair_counts``; the host neighbour list).
    """

    def __init__(self, h5, source: str, options: dict | None = None,
                 cutoff: float | None = None):
        self.h5, self.cutoff = h5, cutoff
        self.n_structures = self.n_atoms = 0
        self.elements: set[int] = set()
        h5.attrs.update({"format": FORMAT, "version": VERSION, "source": str(source),
                         "options": json.dumps(options or {}, sort_keys=True),
                         "energy_unit": "eV", "length_unit": "Angstrom"})
        offsets = h5.create_dataset("offsets", shape=(1,), maxshape=(None,), dtype=np.int64,
                                    chunks=(CHUNK_ROWS,))
        offsets[0] = 0
        for name in ARRAYS:
            if name not in OPTIONAL:
                self._create(name)
        if cutoff is not None:
            pc = h5.create_dataset("pair_counts", shape=(0,), maxshape=(None,), dtype=np.int32,
                                   chunks=(CHUNK_ROWS,))
            pc.attrs["cutoff"] = float(cutoff)

    def _create(self, name: str) -> None:
        unit, per_atom, tail, dtype, fill = ARRAYS[name]
        rows = self.n_atoms if per_atom else self.n_structures
        ds = self.h5.create_dataset(name, shape=(rows, *tail), maxshape=(None, *tail),
                                    dtype=dtype, chunks=(CHUNK_ROWS, *tail))
        ds.attrs["unit"] = unit
        for lo in range(0, rows, 16 * CHUNK_ROWS):  # earlier structures: no such label
            hi = min(lo + 16 * CHUNK_ROWS, rows)
            ds[lo:hi] = np.full((hi - lo, *tail), fill, dtype=dtype)

    def append(self, data: Dataset) -> None:
        """Add the structures of ``data`` (validated, in ASE units) after those written."""
        cols = _columns(data)
        for name in OPTIONAL:
            if name in cols and name not in self.h5:
                self._create(name)
        n_new, a_new = len(data), len(cols["numbers"])
        for name in ARRAYS:
            if name not in self.h5:
                continue
            _, per_atom, tail, dtype, fill = ARRAYS[name]
            lo = self.n_atoms if per_atom else self.n_structures
            rows = a_new if per_atom else n_new
            values = cols.get(name)
            if values is None:
                values = np.full((rows, *tail), fill, dtype=dtype)
            ds = self.h5[name]
            ds.resize(lo + rows, axis=0)
            ds[lo:] = values
        offsets = self.h5["offsets"]
        offsets.resize(self.n_structures + n_new + 1, axis=0)
        offsets[self.n_structures + 1:] = self.n_atoms + np.cumsum(data.n_atoms)
        if self.cutoff is not None:
            from so3krates.neighbours import neighbour_list

            counts = [len(neighbour_list(r, c, p, self.cutoff).centers)
                      for r, c, p in zip(data.positions, data.cells, data.pbc)]
            pc = self.h5["pair_counts"]
            pc.resize(self.n_structures + n_new, axis=0)
            pc[self.n_structures:] = counts
        self.n_structures += n_new
        self.n_atoms += a_new
        self.elements |= set(data.elements)

    def finish(self) -> None:
        """Record the totals; call once after the last :meth:`append`."""
        self.h5.attrs.update({"n_structures": self.n_structures, "n_atoms": self.n_atoms,
                              "elements": np.array(sorted(self.elements), dtype=np.int64)})


def write_hdf5(chunks: Iterable[Dataset], path: str | os.PathLike, source: str,
               options: dict | None = None, cutoff: float | None = None,
               after_chunk=None) -> int:
    """Write the structures of ``chunks`` (validated datasets) to the HDF5 file ``path``,
    atomically: into a temporary file beside it, renamed to ``path`` when complete (a crash,
    ``kill -9`` or full disk leaves no partial ``path``, and an old one intact).
    ``after_chunk(n_written)``: called after each chunk. Returns the number of structures."""
    import h5py

    from so3krates.fileio import atomic_path

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            writer = HDF5Writer(h5, source, options, cutoff)
            for chunk in chunks:
                writer.append(chunk)
                if after_chunk is not None:
                    after_chunk(writer.n_structures)
            if writer.n_structures == 0:
                raise DataError(f"{source}: no structures to write")
            writer.finish()
        return writer.n_structures


class HDF5Dataset:
    """Labelled structures in an HDF5 file of this format, read on demand.

    Holds in memory only an index: the file's atom offsets (8 bytes per structure, shared by
    its views) and the file indices of its own structures (8 bytes each). :meth:`subset`
    gives a view (file indices, nothing read);
    :meth:`load` reads structures into an in-memory :class:`Dataset`; :meth:`chunks` reads
    them all in file order, a bounded block at a time.

    Raises:
        DataError: on opening a file that is missing, not HDF5, not of this format or of
            another version, or lacks an array.
    """

    def __init__(self, path: str | os.PathLike, indices: np.ndarray | None = None,
                 _offsets: np.ndarray | None = None):
        self.path = Path(path)
        self.source = str(self.path)
        self._h5 = None
        self._datasets = None
        self._lock = threading.RLock()
        if _offsets is None:
            _offsets = self._open_checked()
        self._offsets = _offsets  # of the whole file, (S_file + 1,)
        n_file = len(_offsets) - 1
        self.indices = (np.arange(n_file, dtype=np.int64) if indices is None
                        else np.asarray(indices, dtype=np.int64))
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n_file):
            raise IndexError(f"{self.path}: indices out of range 0..{n_file - 1}")

    def _open_checked(self) -> np.ndarray:
        import h5py

        if not self.path.exists():
            raise DataError(f"{self.path}: no such file")
        try:
            h5 = h5py.File(self.path, "r")
        except OSError as err:
            raise DataError(f"{self.path}: not a readable HDF5 file ({err}); write one with "
                            "`so3krates convert DATA OUT.h5`") from None
        fmt, version = h5.attrs.get("format"), h5.attrs.get("version")
        if fmt != FORMAT:
            h5.close()
            raise DataError(f"{self.path}: an HDF5 file, but not a so3krates dataset (format "
                            f"{fmt!r}); write one with `so3krates convert DATA OUT.h5`")
        if version != VERSION:
            h5.close()
            raise DataError(f"{self.path}: so3krates dataset format version {version}, this "
                            f"so3krates reads version {VERSION}: convert the data again with "
                            "`so3krates convert`")
        missing = [n for n in ("offsets", *ARRAYS) if n not in OPTIONAL and n not in h5]
        if missing:
            h5.close()
            raise DataError(f"{self.path}: incomplete so3krates dataset, no array(s) {missing}")
        self._h5 = h5
        return h5["offsets"][:]

    def _file(self):
        with self._lock:  # the trainer's prefetch thread reads too
            if self._h5 is None:
                import h5py

                self._h5 = h5py.File(self.path, "r")
            return self._h5

    def close(self) -> None:
        """Close the file (it reopens on the next read)."""
        with self._lock:
            if self._h5 is not None:
                self._h5.close()
                self._h5, self._datasets = None, None

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, indices) -> "HDF5Dataset":
        """The structures at ``indices`` (of this dataset), in that order, as a view."""
        return HDF5Dataset(self.path, self.indices[np.asarray(indices, dtype=np.int64)],
                           _offsets=self._offsets)

    @property
    def n_atoms(self) -> np.ndarray:
        """Number of atoms per structure, shape (S,)."""
        return (self._offsets[self.indices + 1] - self._offsets[self.indices]).astype(np.int64)

    @property
    def elements(self) -> list[int]:
        """Sorted atomic numbers in the file (all of its structures)."""
        return [int(z) for z in self._file().attrs["elements"]]

    @property
    def pbc(self) -> np.ndarray:
        """Periodic directions, (S, 3) bool (read from the file)."""
        return self._file()["pbc"][:][self.indices]

    @property
    def attrs(self) -> dict:
        """The file's attributes (format, version, source, options, totals)."""
        return dict(self._file().attrs)

    def pair_counts(self, cutoff: float) -> np.ndarray | None:
        """Stored pairs within ``cutoff`` Å per structure, (S,), or None if the file has none
        for this cutoff."""
        h5 = self._file()
        if "pair_counts" not in h5 or float(h5["pair_counts"].attrs["cutoff"]) != float(cutoff):
            return None
        return h5["pair_counts"][:][self.indices].astype(np.int64)

    def load(self, indices=None) -> Dataset:
        """Structures ``indices`` of this dataset (default all) in memory, in that order."""
        local = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64)
        wanted = self.indices[local]
        unique, inverse = np.unique(wanted, return_inverse=True)
        if not len(unique) or unique[-1] - unique[0] + 1 == len(unique):  # one run of the file
            data = self._read_range(int(unique[0]) if len(unique) else 0,
                                    int(unique[-1]) + 1 if len(unique) else 0)
        else:
            data = self._read_scattered(unique)
        if np.array_equal(unique, wanted):
            return data
        return data.subset(inverse.reshape(-1))

    def chunks(self, size: int = 4096) -> Iterator[tuple[np.ndarray, Dataset]]:
        """``(positions, data)`` for all structures of this dataset, in file order, reading
        ``size`` consecutive file structures at a time: ``data`` holds those of them in this
        dataset, ``positions`` their indices in this dataset (so memory is bounded by ``size``
        structures however the dataset was subset)."""
        order = np.argsort(self.indices, kind="stable")
        file_sorted = self.indices[order]
        n_file = len(self._offsets) - 1
        for lo in range(0, n_file, size):
            hi = min(lo + size, n_file)
            a, b = np.searchsorted(file_sorted, [lo, hi])
            if a == b:
                continue
            block = self._read_range(lo, hi)
            yield order[a:b], block.subset(file_sorted[a:b] - lo)

    def _arrays(self) -> dict:
        """The file's arrays by name (h5py datasets, looked up once)."""
        with self._lock:
            if self._datasets is None:
                h5 = self._file()
                self._datasets = {name: h5[name] for name in ARRAYS if name in h5}
            return self._datasets

    def _read_range(self, lo: int, hi: int) -> Dataset:
        """File structures ``lo..hi-1`` as an in-memory dataset."""
        a0, a1 = int(self._offsets[lo]), int(self._offsets[hi])
        return self._dataset(lambda ds: ds[lo:hi], lambda ds: ds[a0:a1],
                             self._offsets[lo:hi + 1] - a0)

    def _read_scattered(self, file_indices: np.ndarray) -> Dataset:
        """File structures ``file_indices`` (sorted, unique) as an in-memory dataset: one read
        per array (per-atom arrays: a union of the structures' row ranges)."""
        starts = self._offsets[file_indices]
        counts = self._offsets[file_indices + 1] - starts
        bounds = np.concatenate([[0], np.cumsum(counts)])
        return self._dataset(lambda ds: ds[file_indices],
                             lambda ds: _read_rows(ds, starts, counts), bounds)

    def _dataset(self, per_structure, per_atom, bounds: np.ndarray) -> Dataset:
        """A dataset of the rows that ``per_structure(ds)`` and ``per_atom(ds)`` read, the atoms
        of structure ``k`` at rows ``bounds[k]:bounds[k + 1]`` of the latter."""
        arrays = self._arrays()
        cuts = bounds[1:-1]

        def atoms(name, dtype=np.float64):
            if len(bounds) < 2:
                return []
            return np.split(per_atom(arrays[name]).astype(dtype), cuts)

        def structures(name):
            return per_structure(arrays[name]) if name in arrays else None

        return Dataset(
            numbers=atoms("numbers", np.int64),
            positions=atoms("positions"),
            cells=structures("cells"),
            pbc=structures("pbc"),
            energy=structures("energy"),
            forces=atoms("forces"),
            source=self.source,
            stress=structures("stress"),
            charge=structures("charge"),
            spin=structures("spin"),
            dipole=structures("dipole"),
            charges=atoms("charges") if "charges" in arrays else None,
        )


def _read_rows(ds, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Rows ``starts[k]:starts[k] + counts[k]`` of the h5py dataset ``ds`` for every ``k``
    (ascending, not overlapping), concatenated: one read of a union of hyperslabs."""
    from h5py import h5s

    tail = ds.shape[1:]
    out = np.empty((int(counts.sum()), *tail), dtype=ds.dtype)
    if not len(out):
        return out
    space = ds.id.get_space()
    space.select_none()
    zeros = (0,) * len(tail)
    for a, n in zip(starts.tolist(), counts.tolist()):
        if n:
            space.select_hyperslab((a, *zeros), (n, *tail), op=h5s.SELECT_OR)
    ds.id.read(h5s.create_simple(out.shape), space, out)
    return out


def convert(path: str | os.PathLike, output: str | os.PathLike, options: dict | None = None,
            chunk_size: int = 1000, cutoff: float | None = None, after_chunk=None) -> int:
    """Read the dataset file ``path`` (``read_dataset``'s keyword ``options``: keys, units,
    ``nan_labels``, ``format``) in chunks of ``chunk_size`` structures, with its checks, and
    write it to the HDF5 dataset file ``output`` atomically (:func:`write_hdf5`; ``cutoff``,
    ``after_chunk`` there). Returns the number of structures.

    Raises:
        DataError: unreadable or invalid input, an output name without ``.h5``/``.hdf5``, an
            input that is an HDF5 dataset already.
    """
    from so3krates.data.chunked import read_chunks

    options = dict(options or {})
    if Path(output).suffix.lower() not in SUFFIXES:
        raise DataError(f"{output}: the output must end in .h5 or .hdf5 (training recognises "
                        "an HDF5 dataset by its name)")
    if is_hdf5_path(path, options.get("format")):
        raise DataError(f"{path}: an HDF5 file already; convert reads the original data "
                        "(.npz, extxyz, any ASE format)")
    if cutoff is not None and not cutoff > 0:
        raise DataError(f"--cutoff must be > 0 Å, not {cutoff}")
    chunks = read_chunks(path, chunk_size, **options)
    return write_hdf5(chunks, output, str(path), options, cutoff, after_chunk)
