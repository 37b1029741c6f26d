"""Dataset statistics that initialise the energy head."""

from __future__ import annotations

import numpy as np

from so3krates.data import Dataset


def fit_reference_energies(data: Dataset) -> dict[int, float]:
    """Per-element energies e_Z (eV) minimising ``sum_s (E_s - sum_i e_Z_i)^2`` on ``data``.

    Least squares in float64 on the element-count matrix. For datasets of a single
    composition this is rank-deficient; ``lstsq`` then returns the minimum-norm solution,
    which still reproduces the mean energy exactly.
    """
    elements = data.elements
    col = {z: k for k, z in enumerate(elements)}
    ok = np.isfinite(data.energy)
    counts = np.zeros((int(ok.sum()), len(elements)))
    for row, k in enumerate(np.flatnonzero(ok)):
        zs, c = np.unique(data.numbers[k], return_counts=True)
        counts[row, [col[int(z)] for z in zs]] = c
    if counts.shape[0] == 0:
        return {z: 0.0 for z in elements}
    coef, *_ = np.linalg.lstsq(counts, data.energy[ok], rcond=None)
    return {z: float(c) for z, c in zip(elements, coef)}


def force_scale(data: Dataset) -> float:
    """Root-mean-square force component (eV/Å): the natural energy scale per atom and Å."""
    f = np.concatenate([x.ravel() for x in data.forces])
    f = f[np.isfinite(f)]
    rms = float(np.sqrt(np.mean(f**2))) if f.size else 1.0
    return rms if rms > 0 else 1.0
