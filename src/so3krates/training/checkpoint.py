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


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Serialise a pytree of arrays (and plain numbers) to ``path`` atomically."""
    host = jax.tree.map(np.asarray, serialization.to_state_dict(state))
    atomic_write_bytes(path, serialization.msgpack_serialize(host))


def load_checkpoint(path: str | os.PathLike, template: dict[str, Any]) -> dict[str, Any]:
    """Restore a checkpoint into the structure of ``template`` (same pytree layout)."""
    raw = serialization.msgpack_restore(Path(path).read_bytes())
    return serialization.from_state_dict(template, raw)
