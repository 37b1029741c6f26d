"""Reciprocal-space "neighbours": the lattice vectors of an Ewald sum's k-space part.

The reciprocal part of an Ewald sum runs over the k-vectors ``k = 2π m inv(cell)ᵀ`` (integer
``m ≠ 0``) inside a sphere ``|k| <= k_cut``. Like a neighbour list, the set is built on the
host once per structure (or cell) and stored as integers, so that the energy computes ``k``
from the traced cell: its strain derivative (the stress) is then exact for the fixed set.
"""

from __future__ import annotations

import numpy as np


def kspace_indices(cell: np.ndarray, k_cutoff: float) -> np.ndarray:
    """Integer indices ``m`` (K, 3) int32 of all ``0 < |2π m inv(cell)ᵀ| <= k_cutoff`` (1/Å),
    one of each ``±m`` (the first non-zero component positive; a sum over them counts each
    pair twice). ``cell``: lattice vectors as rows (3, 3) in Å, with a volume."""
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    if abs(np.linalg.det(cell)) < 1e-12:
        raise ValueError("an Ewald sum needs a 3D-periodic cell with a volume")
    reciprocal = 2.0 * np.pi * np.linalg.inv(cell).T  # rows b_i, a_i · b_j = 2π δ_ij
    # m_i = k · a_i / 2π: every index of the sphere lies in this box.
    bound = np.floor(k_cutoff * np.linalg.norm(cell, axis=1) / (2.0 * np.pi)).astype(int)
    axes = [np.arange(-n, n + 1) for n in bound]
    m = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    half = (m[:, 0] > 0) | ((m[:, 0] == 0) & ((m[:, 1] > 0)
                                              | ((m[:, 1] == 0) & (m[:, 2] > 0))))
    inside = np.linalg.norm(m @ reciprocal, axis=1) <= k_cutoff
    return m[half & inside].astype(np.int32)
