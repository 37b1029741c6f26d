"""Atomic file writes: a crash or a full disk never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``
    (:func:`atomic_path`).

    On any error (e.g. ``ENOSPC``) the temporary file is removed and the previous content of
    ``path``, if any, is left untouched; the error is re-raised with the path in its message.
    """
    with atomic_path(path) as tmp, os.fdopen(os.open(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as fh:
        fh.write(data)
        fh.flush()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path in the folder of ``path`` for a writer that needs a file name (HDF5):
    when the block ends without error the file there is synced and renamed to ``path``;
    on an error it is removed and ``path``, if it exists, is left untouched. A process
    killed inside the block leaves the hidden temporary file (``.NAME.*.tmp``), never a
    partial ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError) and err.errno is not None:
            raise OSError(err.errno, f"could not write {path}: {err.strerror}") from err
        raise
