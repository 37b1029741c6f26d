"""Training checkpoints: the full training state in msgpack, written atomically.

A checkpoint holds parameters, optimiser state, EMA parameters and the loop's host state
(step, best validation loss, early-stopping counter), so that a killed run resumes exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from so3krates.fileio import atomic_write_bytes

# Stored beside the state; a checkpoint of another format is refused by name. Checkpoints
# written before the field existed have none and load if their layout matches.
FORMAT_KEY = "__format__"
CHECKPOINT_FORMAT = "so3krates-checkpoint/1"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Serialise a pytree of arrays (and plain numbers) to ``path`` atomically."""
    host = jax.tree.map(np.asarray, serialization.to_state_dict(state))
    atomic_write_bytes(path, serialization.msgpack_serialize({**host, FORMAT_KEY: CHECKPOINT_FORMAT}))


def load_checkpoint(path: str | os.PathLike, template: dict[str, Any],
                    raw: dict | None = None) -> dict[str, Any]:
    """Restore a checkpoint into the structure of ``template`` (same pytree layout); ``raw``:
    the file's content already read by :func:`read_checkpoint`.

    Raises ValueError if the file is truncated or corrupt, of another format version, or if
    its layout or array shapes differ from ``template``'s.
    """
    raw = read_checkpoint(path) if raw is None else raw
    try:
        state = serialization.from_state_dict(template, raw)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path}: layout differs: {err}") from err
    want, got = jax.tree.structure(template), jax.tree.structure(state)
    if want != got:
        raise ValueError(f"checkpoint {path}: layout differs: {got} instead of {want}")
    for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(state)):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"checkpoint {path}: array of shape {np.shape(b)} instead of {np.shape(a)}")
    return state


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint's state dict without its format field, with one-line errors naming the
    file (msgpack's own say only "incomplete input")."""
    path = Path(path)
    blob = path.read_bytes()
    try:
        raw = serialization.msgpack_restore(blob)
    except Exception:
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({len(blob)} bytes, "
                         f"not readable msgpack)") from None
    if not isinstance(raw, dict):
        raise ValueError(f"checkpoint {path} is not a training state")
    fmt = raw.pop(FORMAT_KEY, CHECKPOINT_FORMAT)
    if fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} was written in format {fmt!r} by another so3krates "
                         f"version; this version reads {CHECKPOINT_FORMAT!r}")
    return raw
