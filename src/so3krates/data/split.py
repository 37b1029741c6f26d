"""Seeded train/valid/test splits, saved next to the model so evaluation reuses them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from so3krates.data.dataset import DataError

SPLIT_FILE = "split.npz"


def make_split(
    n_total: int, n_train: int, n_valid: int, n_test: int | None, seed: int, shuffle: bool = True
) -> dict[str, np.ndarray]:
    """Disjoint index sets ``train``, ``valid``, ``test`` (test: the rest when ``n_test`` is None)."""
    n_test = n_total - n_train - n_valid if n_test is None else n_test
    if n_train + n_valid + n_test > n_total or n_test < 0:
        raise DataError(
            f"split needs {n_train} train + {n_valid} valid + {max(n_test, 0)} test structures, "
            f"but the data has only {n_total}"
        )
    order = np.random.default_rng(seed).permutation(n_total) if shuffle else np.arange(n_total)
    return {
        "train": order[:n_train],
        "valid": order[n_train : n_train + n_valid],
        "test": order[n_train + n_valid : n_train + n_valid + n_test],
    }


def save_split(directory: str | os.PathLike, split: dict[str, np.ndarray], n_total: int) -> None:
    """Write the split as ``split.npz`` (integer arrays only)."""
    from io import BytesIO

    from so3krates.fileio import atomic_write_bytes

    buf = BytesIO()
    np.savez(buf, n_total=np.int64(n_total), **{k: v.astype(np.int64) for k, v in split.items()})
    atomic_write_bytes(Path(directory) / SPLIT_FILE, buf.getvalue())


def load_split(directory: str | os.PathLike, n_total: int | None = None) -> dict[str, np.ndarray]:
    """Read ``split.npz``; check it matches a dataset of ``n_total`` structures."""
    path = Path(directory) / SPLIT_FILE
    if not path.exists():
        raise DataError(f"{path}: no split saved in this model directory")
    with np.load(path, allow_pickle=False) as f:
        split = {k: f[k] for k in ("train", "valid", "test")}
        saved_total = int(f["n_total"])
    if n_total is not None and n_total != saved_total:
        raise DataError(
            f"{path} was made for a dataset of {saved_total} structures, this one has {n_total}"
        )
    return split
