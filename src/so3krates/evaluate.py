"""Honest evaluation: energy and force errors per structure, per atom and per component."""

from __future__ import annotations

from typing import Callable

import numpy as np

from so3krates.batching import GraphDataset
from so3krates.data import Dataset


def predict_dataset(
    predict_fn: Callable, params, graphs: GraphDataset
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Energies (S,) and per-structure forces of every structure of ``graphs``, in order."""
    energies, forces = [], []
    for graph, _ in graphs.batches():
        pred = predict_fn(params, graph)
        n_struct = int(graph.structure_mask.sum())
        e = np.asarray(pred.energy)[:n_struct]
        f = np.asarray(pred.forces, dtype=np.float64)
        counts = np.bincount(np.asarray(graph.structure)[graph.atom_mask], minlength=n_struct)
        energies.append(e)
        forces.extend(np.split(f[: counts.sum()], np.cumsum(counts)[:-1]))
    return np.concatenate(energies), forces


def label_errors(
    data: Dataset, energy: np.ndarray, forces: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Prediction minus label of energies (eV) and force components (eV/Å), flat, leaving out
    NaN labels only: a NaN prediction stays NaN (and shows in every metric)."""
    e_ok = np.isfinite(data.energy)
    de = (energy - data.energy)[e_ok]
    ref = np.concatenate([r.ravel() for r in data.forces])
    df = np.concatenate([(p - r).ravel() for p, r in zip(forces, data.forces)])
    return de, df[np.isfinite(ref)]


def error_metrics(
    data: Dataset, energy: np.ndarray, forces: list[np.ndarray]
) -> dict[str, float]:
    """MAE/RMSE and largest absolute errors of energies (eV; MAE/RMSE also per atom) and force
    components (eV/Å); NaN labels skipped."""
    return metrics_of_errors(data, *label_errors(data, energy, forces))


def metrics_of_errors(data: Dataset, de: np.ndarray, df: np.ndarray) -> dict[str, float]:
    """:func:`error_metrics` of the errors ``de``, ``df`` that :func:`label_errors` gives."""
    n_atoms = data.n_atoms
    n_ok = n_atoms[np.isfinite(data.energy)]  # atoms of the structures with energy labels
    nan = float("nan")
    return {
        "n_structures": int(len(data)),
        "n_atoms_total": int(n_atoms.sum()),
        "energy_mae": float(np.mean(np.abs(de))) if de.size else nan,
        "energy_rmse": float(np.sqrt(np.mean(de**2))) if de.size else nan,
        "energy_mae_per_atom": float(np.mean(np.abs(de) / n_ok)) if de.size else nan,
        "energy_rmse_per_atom": float(np.sqrt(np.mean((de / n_ok) ** 2))) if de.size else nan,
        "forces_mae": float(np.mean(np.abs(df))) if df.size else nan,
        "forces_rmse": float(np.sqrt(np.mean(df**2))) if df.size else nan,
        # Worst cases: one structure in a hole of the energy surface hardly moves an MAE of
        # thousands of structures, but it is where an MD run would fly apart.
        "energy_max_error": float(np.max(np.abs(de))) if de.size else nan,
        "forces_max_error": float(np.max(np.abs(df))) if df.size else nan,
    }


def evaluate_model(model, data: Dataset, batch_size: int = 16) -> tuple[dict, np.ndarray, list[np.ndarray]]:
    """Metrics, predicted energies and forces of a loaded model on ``data``.

    Raises ``ValueError`` if ``data`` contains elements the model never saw.
    """
    for zs in data.numbers:
        model.check_elements(zs)
    graphs = GraphDataset(data, model.cutoff, batch_size, n_buckets=2, dtype=np.dtype(model.dtype))
    predict_fn = model.predict_halves_fn if graphs.pair_halves else model.predict_fn
    energy, forces = predict_dataset(predict_fn, model.inference_params, graphs)
    return error_metrics(data, energy, forces), energy, forces
