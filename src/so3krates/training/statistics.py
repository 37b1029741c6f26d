"""Dataset statistics that initialise the energy head: of an in-memory training set, or in
one streaming pass over a training set read in chunks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

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


@dataclass(frozen=True)
class TrainingSummary:
    """What the trainer needs to know of its training set before it builds the model.

    Attributes:
        reference_energies: per-element energies e_Z in eV (see :func:`fit_reference_energies`).
        force_scale: root-mean-square force component in eV/Å (see :func:`force_scale`).
        has_stress, has_dipole, has_charges: some structure has such a label.
    """

    reference_energies: dict[int, float]
    force_scale: float
    has_stress: bool
    has_dipole: bool
    has_charges: bool


def summarise(data: Dataset, terms) -> TrainingSummary:
    """The :class:`TrainingSummary` of an in-memory training set; reference energies fitted to
    the labels minus the parameter-free energies of ``terms`` (a
    ``so3krates.terms.physical.PhysicalTerms``)."""
    refs = fit_reference_energies(dataclasses.replace(
        data, energy=data.energy - terms.parameter_free_energies(data)))
    return TrainingSummary(refs, force_scale(data), data.has_stress, data.has_dipole,
                           data.has_charges)


MAX_Z = 118  # the largest atomic number


class ReferenceEnergyFit:
    """:func:`fit_reference_energies` in a streaming pass: accumulates the normal equations
    ``CᵀC e = Cᵀ E`` of the element-count matrix ``C`` (exact integers in float64) chunk by
    chunk, in memory independent of the number of structures, and solves them for the
    minimum-norm solution, which is the least-squares one of ``C e = E`` (the two agree to
    rounding, ~1e-12 relative)."""

    def __init__(self):
        self.ctc = np.zeros((MAX_Z + 1, MAX_Z + 1))
        self.cte = np.zeros(MAX_Z + 1)
        self.present = np.zeros(MAX_Z + 1, dtype=bool)

    def add(self, numbers: list[np.ndarray], energy: np.ndarray) -> None:
        """Structures with atomic numbers ``numbers`` (per structure) and energies ``energy``
        (S,) eV; NaN energies count for the elements present only."""
        if not len(numbers):
            return
        sizes = np.array([len(z) for z in numbers])
        rows = np.repeat(np.arange(len(numbers)), sizes)
        counts = np.zeros((len(numbers), MAX_Z + 1))
        np.add.at(counts, (rows, np.concatenate(numbers).astype(np.int64)), 1.0)
        self.present |= counts.any(axis=0)
        ok = np.isfinite(energy)
        c = counts[ok]
        self.ctc += c.T @ c
        self.cte += c.T @ np.asarray(energy, np.float64)[ok]

    def solve(self) -> dict[int, float]:
        """Per-element energies (eV) of the elements seen."""
        elements = np.flatnonzero(self.present)
        a = self.ctc[np.ix_(elements, elements)]
        if not a.any():
            return {int(z): 0.0 for z in elements}
        # singular values of CᵀC are those of C squared: 1e-12 keeps those of C above 1e-6
        coef, *_ = np.linalg.lstsq(a, self.cte[elements], rcond=1e-12)
        return {int(z): float(c) for z, c in zip(elements, coef)}

    def solve_keeping(self, known: dict[int, float]) -> dict[int, float]:
        """``known`` per-element energies (eV) as they are, and those of the other elements
        seen fitted by least squares to the residual ``E - sum_{Z known} n_Z e_Z`` (the
        normal equations of the unknown elements' columns; minimum-norm as :meth:`solve`).
        Returns every element of ``known`` and every element seen."""
        fixed = np.zeros(MAX_Z + 1)
        is_known = np.zeros(MAX_Z + 1, dtype=bool)
        for z, e in known.items():
            fixed[int(z)], is_known[int(z)] = float(e), True
        out = {int(z): float(e) for z, e in known.items()}
        new = np.flatnonzero(self.present & ~is_known)
        if not new.size:
            return out
        a = self.ctc[np.ix_(new, new)]
        b = self.cte[new] - self.ctc[np.ix_(new, np.flatnonzero(is_known))] @ fixed[is_known]
        if not a.any():
            return {**out, **{int(z): 0.0 for z in new}}
        coef, *_ = np.linalg.lstsq(a, b, rcond=1e-12)
        return {**out, **{int(z): float(c) for z, c in zip(new, coef)}}



def streaming_summary(chunks: Iterable[Dataset], terms) -> TrainingSummary:
    """The :class:`TrainingSummary` of a training set given as ``chunks`` (in-memory datasets
    read one after the other), as :func:`summarise` computes it for the whole set (to
    rounding: sums in another order)."""
    fit = ReferenceEnergyFit()
    sum_sq, count = 0.0, 0
    has = {"stress": False, "dipole": False, "charges": False}
    for chunk in chunks:
        fit.add(chunk.numbers, chunk.energy - terms.parameter_free_energies(chunk))
        f = np.concatenate([x.ravel() for x in chunk.forces])
        f = f[np.isfinite(f)]
        sum_sq += float(np.sum(f**2))
        count += f.size
        for name in has:
            has[name] = has[name] or getattr(chunk, f"has_{name}")
    rms = float(np.sqrt(sum_sq / count)) if count else 1.0
    return TrainingSummary(fit.solve(), rms if rms > 0 else 1.0, has["stress"], has["dipole"],
                           has["charges"])
