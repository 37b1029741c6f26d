"""Reading a dataset file in chunks of structures, with bounded memory (for ``so3krates
convert``): the readers' options, unit conversion and checks, applied chunk by chunk."""

from __future__ import annotations

import inspect
import os
from itertools import islice
from typing import Iterator

import numpy as np

from so3krates.data.dataset import DataError, Dataset, renumbered
from so3krates.data.readers import _frames_dataset, _Reading, check_named_keys, read_dataset


def read_chunks(path: str | os.PathLike, chunk_size: int = 1000, **options) -> Iterator[Dataset]:
    """Read ``path`` as :func:`~so3krates.data.read_dataset` does (same keyword ``options``,
    units and checks), as validated datasets of at most ``chunk_size`` structures, in file
    order. ASE formats are read frame by frame (``ase.io.iread``), so memory is bounded by the
    chunk; an ``.npz`` file is read whole (the format cannot be read in parts), then served in
    chunks.

    Errors name structures by their index in the file. One check of a whole file is made per
    chunk: a chunk without a single finite label is refused (``nan_labels="mask"``).

    Raises:
        DataError: as ``read_dataset`` (missing file, missing keys, NaN labels, overlaps...).
        TypeError: an option ``read_dataset`` does not take.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, not {chunk_size}")
    bound = inspect.signature(read_dataset).bind(path, **options)
    bound.apply_defaults()
    args = bound.arguments
    reading = _Reading.of(**args)
    if reading.is_npz:
        data = read_dataset(path, **options)
        for lo in range(0, len(data), chunk_size):
            yield data.subset(np.arange(lo, min(lo + chunk_size, len(data))))
        return
    import ase.io

    frames = ase.io.iread(reading.path, index=":", format=args["format"])
    first = 0
    found: dict = {}  # label kinds found so far, and the keys seen
    while True:
        try:
            chunk = list(islice(frames, chunk_size))
        except Exception as err:  # ASE raises many types for a malformed frame
            raise DataError(f"{reading.path}: ASE could not read the file after structure "
                            f"{first} ({type(err).__name__}: {err})") from None
        if not chunk:
            break
        try:
            raw = _frames_dataset(chunk, reading.path, args["energy_key"], args["forces_key"],
                                  args["stress_key"], args["virial_key"], reading.keys, found)
            data = reading.finish(raw)
        except DataError as err:
            raise renumbered(err, np.arange(first, first + len(chunk))) from None
        yield data
        first += len(chunk)
    if first == 0:
        raise DataError(f"{reading.path}: no structures found (empty file?)")
    check_named_keys(reading.keys, found, found.get("available", set()), reading.path)
