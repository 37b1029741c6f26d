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


PME_ORDER = 5
"""B-spline order of particle-mesh Ewald (points per axis each atom spreads onto; C³ smooth)."""

PME_SPACING_PER_WIDTH = 0.25
"""PME mesh spacing as a fraction of the Ewald Gaussian width 1/(√2 α)."""

PME_AUTO_THRESHOLD = 200_000
"""Ewald phase factors N·K above which the "auto" k-space method uses PME."""


def _fft_size(n: int) -> int:
    """The smallest integer >= n (and >= 2 × the spline order, so that a spline never wraps
    onto itself) whose prime factors are 2, 3 and 5: fast FFT sizes."""
    n = max(int(n), 2 * PME_ORDER)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def mesh_shape(cell: np.ndarray, alpha: float) -> tuple[int, int, int]:
    """Grid points along each lattice vector of a particle-mesh Ewald sum with splitting
    parameter ``alpha`` (1/Å) in ``cell`` (lattice vectors as rows, Å): a spacing between
    grid planes of at most :data:`PME_SPACING_PER_WIDTH` Gaussian widths (measured between
    lattice planes, so that skewed cells get enough points)."""
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    volume = abs(np.linalg.det(cell))
    if volume < 1e-12:
        raise ValueError("particle-mesh Ewald needs a 3D-periodic cell with a volume")
    planes = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    spacing = PME_SPACING_PER_WIDTH / (np.sqrt(2.0) * float(alpha))
    return tuple(_fft_size(int(np.ceil(d / spacing))) for d in planes)


def use_pme(method: str, n_atoms: int, n_kvectors: int) -> bool:
    """Whether one periodic structure's reciprocal sum runs on a mesh (PME) rather than over
    its k-vectors: ``method`` "pme" or "ewald" decide; "auto" chooses the mesh where the
    Ewald sum's N·K phase factors exceed :data:`PME_AUTO_THRESHOLD`."""
    if method not in ("auto", "ewald", "pme"):
        raise ValueError(f"unknown k-space method {method!r}: use auto, ewald or pme")
    if method != "auto":
        return method == "pme"
    return n_atoms * n_kvectors > PME_AUTO_THRESHOLD
