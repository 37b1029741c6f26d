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
    """Restore a checkpoint into the structure of ``template`` (same pytree layout).

    Raises ValueError if the checkpoint's layout or array shapes differ from ``template``'s.
    """
    raw = serialization.msgpack_restore(Path(path).read_bytes())
    try:
        state = serialization.from_state_dict(template, raw)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"checkpoint layout differs: {err}") from err
    want, got = jax.tree.structure(template), jax.tree.structure(state)
    if want != got:
        raise ValueError(f"checkpoint layout differs: {got} instead of {want}")
    for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(state)):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"checkpoint array of shape {np.shape(b)} instead of {np.shape(a)}")
    return state
