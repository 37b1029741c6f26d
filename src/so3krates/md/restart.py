"""MD restart files: the engine state as an ``.npz`` of plain arrays plus a JSON record.

Written atomically (a full disk or a kill never leaves a half-written state), read without
pickle.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from so3krates.fileio import atomic_write_bytes

STATE_FORMAT = "so3krates-md-state"
STATE_FORMAT_VERSION = 1
_META_KEY = "__meta__"


def save_state(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write a restart file (.npz) atomically: numeric ``arrays`` plus JSON-serialisable ``meta``.

    ``meta`` is stored as a JSON string array so that loading never needs pickle; object
    arrays are refused for the same reason.
    """
    if _META_KEY in arrays:
        raise ValueError(f"array name {_META_KEY!r} is reserved")
    payload = {}
    for name, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise ValueError(f"state array {name!r} has dtype object; only plain arrays are stored")
        payload[name] = arr
    record = {"format": STATE_FORMAT, "format_version": STATE_FORMAT_VERSION, "meta": meta}
    payload[_META_KEY] = np.array(json.dumps(record))
    buf = io.BytesIO()
    np.savez(buf, **payload)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read a restart file written by :func:`save_state`; returns ``(arrays, meta)``.

    Raises ``ValueError`` with the path if the file is missing, truncated or not a state file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"restart file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if _META_KEY not in npz.files:
                raise ValueError("no metadata record")
            record = json.loads(str(npz[_META_KEY][()]))
            arrays = {name: npz[name] for name in npz.files if name != _META_KEY}
        if not isinstance(record, dict) or record.get("format") != STATE_FORMAT:
            raise ValueError("metadata is not a so3krates MD state record")
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"restart file {path} is corrupt or not a state file: {err}") from err
    if record.get("format_version", 0) > STATE_FORMAT_VERSION:
        raise ValueError(f"restart file {path} has a newer format version "
                         f"{record['format_version']} than supported ({STATE_FORMAT_VERSION})")
    return arrays, record["meta"]
