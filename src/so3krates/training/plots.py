"""PNG plots: learning curves from the metrics CSV, and energy/force parity plots."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from so3krates.plotting import pyplot, save_figure


def plot_learning_curves(metrics_csv: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Training loss and validation MAEs against the step (log scale)."""
    plt = pyplot()
    with open(metrics_csv) as fh:
        rows = list(csv.DictReader(fh))
    step = np.array([float(r["step"]) for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label in (
        (axes[0], "train_loss", "training loss"),
        (axes[1], "valid_energy_mae", "valid energy MAE / meV"),
        (axes[2], "valid_forces_mae", "valid force MAE / meV/Å"),
    ):
        y = np.array([float(r[key]) for r in rows])
        if "mae" in key:
            y = y * 1000.0
        ax.plot(step, y, marker=".")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    return save_figure(fig, out_png)


def plot_parity(
    energy_ref: np.ndarray,
    energy_pred: np.ndarray,
    forces_ref: np.ndarray,
    forces_pred: np.ndarray,
    out_png: str | os.PathLike,
    title: str = "",
    stress_ref: np.ndarray | None = None,
    stress_pred: np.ndarray | None = None,
) -> Path:
    """Predicted vs reference energies (eV, shifted by the mean reference), force components
    and, when both are given, stress components (shown in GPa)."""
    plt = pyplot()
    panels = [("energy − mean", "eV"), ("force components", "eV/Å")]
    with_stress = stress_ref is not None and stress_pred is not None
    if with_stress:
        panels.append(("stress components", "GPa"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.75 * len(panels), 4.4))
    ok = np.isfinite(energy_ref)
    shift = float(np.mean(energy_ref[ok])) if ok.any() else 0.0
    data = [(energy_ref[ok] - shift, energy_pred[ok] - shift),
            (forces_ref.ravel(), forces_pred.ravel())]
    if with_stress:
        gpa = 160.21766208
        data.append((np.ravel(stress_ref) * gpa, np.ravel(stress_pred) * gpa))
    for ax, (ref, pred), (name, unit) in zip(axes, data, panels):
        good = np.isfinite(ref)
        ref, pred = ref[good], pred[good]
        if ref.size:
            lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
            ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
            ax.scatter(ref, pred, s=4, alpha=0.5)
            mae = np.mean(np.abs(pred - ref))
            ax.set_title(f"{name}: MAE {mae:.3f} {unit}" if unit == "GPa"
                         else f"{name}: MAE {mae * 1000:.2f} m{unit}")
        ax.set_xlabel(f"reference / {unit}")
        ax.set_ylabel(f"predicted / {unit}")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_png)
