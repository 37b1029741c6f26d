"""Honest evaluation: energy, force and stress errors per structure, per atom and per component."""

from __future__ import annotations

from typing import Callable

import numpy as np

from so3krates.batching import GraphDataset
from so3krates.data import Dataset

EV_PER_A3_IN_GPA = 160.21766208  # 1 eV/Å³ in GPa


def predict_dataset(
    predict_fn: Callable, params, graphs: GraphDataset, extras: bool = False
):
    """Energies (S,), per-structure forces and stresses (S, 3, 3) (None if ``predict_fn``
    computes no stress) of every structure of ``graphs``, in order. With ``extras`` a fourth
    item: a dict of what the potential predicts besides ("dipole" (S, 3) e Å, "charges" per
    structure (n_i,) e, "energy_terms" {name: (S,) eV}; for an ensemble's
    :class:`~so3krates.ensemble.EnsemblePrediction` "energy_uncertainty" (S,) eV,
    "forces_uncertainty" per structure (n_i,) eV/Å and "member_energies" (S, M) eV), empty
    for a plain network."""
    energies, forces, stresses = [], [], []
    more: dict = {}
    for graph, _ in graphs.batches():
        pred = predict_fn(params, graph)
        n_struct = int(graph.structure_mask.sum())
        e = np.asarray(pred.energy)[:n_struct]
        f = np.asarray(pred.forces, dtype=np.float64)
        counts = np.bincount(np.asarray(graph.structure)[graph.atom_mask], minlength=n_struct)
        energies.append(e)
        forces.extend(np.split(f[: counts.sum()], np.cumsum(counts)[:-1]))
        if pred.stress is not None:
            stresses.append(np.asarray(pred.stress, dtype=np.float64)[:n_struct])
        if extras and pred.dipole is not None:
            more.setdefault("dipole", []).append(np.asarray(pred.dipole)[:n_struct])
            q = np.asarray(pred.charges, dtype=np.float64)
            more.setdefault("charges", []).extend(np.split(q[: counts.sum()],
                                                           np.cumsum(counts)[:-1]))
        if extras and pred.energy_terms is not None:
            for name, e_term in pred.energy_terms.items():
                more.setdefault("energy_terms", {}).setdefault(name, []).append(
                    np.asarray(e_term)[:n_struct])
        if extras and getattr(pred, "energy_uncertainty", None) is not None:
            more.setdefault("energy_uncertainty", []).append(
                np.asarray(pred.energy_uncertainty, np.float64)[:n_struct])
            more.setdefault("member_energies", []).append(
                np.asarray(pred.members.energy, np.float64)[:, :n_struct].T)
            fu = np.asarray(pred.forces_uncertainty, np.float64)
            more.setdefault("forces_uncertainty", []).extend(
                np.split(fu[: counts.sum()], np.cumsum(counts)[:-1]))
    out = (np.concatenate(energies), forces, np.concatenate(stresses) if stresses else None)
    if not extras:
        return out
    for key in ("dipole", "energy_uncertainty", "member_energies"):
        if key in more:
            more[key] = np.concatenate(more[key])
    if "energy_terms" in more:
        more["energy_terms"] = {k: np.concatenate(v) for k, v in more["energy_terms"].items()}
    return (*out, more)


def electronic_errors(data: Dataset, extras: dict) -> tuple[np.ndarray, np.ndarray]:
    """Prediction minus label of dipole components (e Å) and partial charges (e), flat,
    labelled entries only (empty without predictions or labels)."""
    dd = dq = np.zeros(0)
    if "dipole" in extras and data.dipole is not None:
        ok = np.isfinite(data.dipole)
        dd = (extras["dipole"] - data.dipole)[ok]
    if "charges" in extras and data.charges is not None:
        dq = np.concatenate([(p - r)[np.isfinite(r)] for p, r in zip(extras["charges"],
                                                                      data.charges)])
    return dd, dq


def electronic_metrics(dd: np.ndarray, dq: np.ndarray) -> dict[str, float]:
    """MAE/RMSE of dipole components (``dipole_mae``, e Å) and partial charges
    (``charges_mae``, e), where there are errors."""
    out = {}
    for name, err in (("dipole", dd), ("charges", dq)):
        if err.size:
            out.update({f"{name}_mae": float(np.mean(np.abs(err))),
                        f"{name}_rmse": float(np.sqrt(np.mean(err**2))),
                        f"{name}_max_error": float(np.max(np.abs(err)))})
    return out


def label_errors(
    data: Dataset, energy: np.ndarray, forces: list[np.ndarray], stress: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prediction minus label of energies (eV), force components (eV/Å) and stress components
    (eV/Å³; empty without predicted or labelled stress), flat, leaving out NaN labels only: a
    NaN prediction stays NaN (and shows in every metric)."""
    e_ok = np.isfinite(data.energy)
    de = (energy - data.energy)[e_ok]
    ref = np.concatenate([r.ravel() for r in data.forces])
    df = np.concatenate([(p - r).ravel() for p, r in zip(forces, data.forces)])
    ds = np.zeros(0)
    if stress is not None and data.stress is not None:
        ok = np.isfinite(data.stress)
        ds = (stress - data.stress)[ok]
    return de, df[np.isfinite(ref)], ds


def error_metrics(
    data: Dataset, energy: np.ndarray, forces: list[np.ndarray], stress: np.ndarray | None = None
) -> dict[str, float]:
    """MAE/RMSE and largest absolute errors of energies (eV; MAE/RMSE also per atom), force
    components (eV/Å) and, where labelled, stress components (eV/Å³); NaN labels skipped."""
    return metrics_of_errors(data, *label_errors(data, energy, forces, stress))


def metrics_of_errors(data: Dataset, de: np.ndarray, df: np.ndarray,
                      ds: np.ndarray | None = None) -> dict[str, float]:
    """:func:`error_metrics` of the errors ``de``, ``df``, ``ds`` that :func:`label_errors`
    gives. Stress metrics (``stress_mae``, ``stress_rmse`` in eV/Å³, ``stress_mae_GPa``,
    ``stress_rmse_GPa``, ``n_stress_labels``) appear when there are stress errors."""
    n_atoms = data.n_atoms
    n_ok = n_atoms[np.isfinite(data.energy)]  # atoms of the structures with energy labels
    nan = float("nan")
    metrics = {
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
    if ds is not None and ds.size:
        mae, rmse = float(np.mean(np.abs(ds))), float(np.sqrt(np.mean(ds**2)))
        metrics.update(stress_mae=mae, stress_rmse=rmse, stress_mae_GPa=mae * EV_PER_A3_IN_GPA,
                       stress_rmse_GPa=rmse * EV_PER_A3_IN_GPA,
                       stress_max_error=float(np.max(np.abs(ds))), n_stress_labels=int(ds.size // 9))
    return metrics


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` (NaN for fewer than 3 pairs, constant
    or non-finite input)."""
    if x.size < 3 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def uncertainty_metrics(
    data: Dataset, energy: np.ndarray, forces: list[np.ndarray], extras: dict
) -> dict[str, float]:
    """How an ensemble's spread relates to its errors (labelled entries only; NaN where there
    is nothing to compare):

    - ``n_members``;
    - ``energy_uncertainty_mean`` (eV), ``forces_uncertainty_mean`` (eV/Å): the mean predicted
      energy uncertainty per structure and force uncertainty per atom (over all structures);
    - ``energy_uncertainty_spearman``: Spearman rank correlation between the per-structure
      energy uncertainty and the absolute energy error;
    - ``forces_uncertainty_spearman``: the same between the per-atom force uncertainty and the
      norm of the per-atom force error (atoms with all three components labelled);
    - ``energy_error_to_uncertainty``, ``forces_error_to_uncertainty``: RMS error over RMS
      uncertainty (energies; force components against the per-atom force uncertainty, which
      is per component): about 1 when the spread is a calibrated standard deviation, above 1
      when the committee is over-confident.
    """
    e_unc = extras["energy_uncertainty"]
    f_unc = extras["forces_uncertainty"]
    nan = float("nan")
    out = {"n_members": int(extras["member_energies"].shape[1]),
           "energy_uncertainty_mean": float(np.mean(e_unc)),
           "forces_uncertainty_mean": float(np.mean(np.concatenate(f_unc)))}
    ok = np.isfinite(data.energy)
    de = np.abs(energy - data.energy)[ok]
    out["energy_uncertainty_spearman"] = _spearman(e_unc[ok], de)
    rms_e = np.sqrt(np.mean(e_unc[ok] ** 2)) if ok.any() else 0.0
    out["energy_error_to_uncertainty"] = (float(np.sqrt(np.mean(de**2)) / rms_e) if rms_e > 0
                                          else nan)
    labelled = [np.all(np.isfinite(r), axis=1) for r in data.forces]
    err = np.concatenate([np.linalg.norm(p - r, axis=1)[m]
                          for p, r, m in zip(forces, data.forces, labelled)])
    unc = np.concatenate([u[m] for u, m in zip(f_unc, labelled)])
    out["forces_uncertainty_spearman"] = _spearman(unc, err)
    rms_f = np.sqrt(np.mean(unc**2)) if unc.size else 0.0
    # err is the norm of 3 components: the RMS component error is sqrt(mean(err^2) / 3).
    out["forces_error_to_uncertainty"] = (float(np.sqrt(np.mean(err**2) / 3.0) / rms_f)
                                          if rms_f > 0 else nan)
    return out


def evaluate_model(
    model, data: Dataset, batch_size: int = 16
) -> tuple[dict, np.ndarray, list[np.ndarray], np.ndarray | None]:
    """Metrics, predicted energies, forces and (for data with stress labels) stresses of a
    loaded model on ``data``.

    With physical terms the metrics hold dipole and partial-charge errors where labelled, and
    ``energy_terms_mean``: each term's mean energy per structure (eV).

    ``model`` may be an :class:`so3krates.ensemble.Ensemble`: the errors are then those of
    the members' mean (the energies, forces and stresses returned), and the metrics add the
    uncertainty statistics of :func:`uncertainty_metrics`.

    Raises ``ValueError`` if ``data`` contains elements the model never saw.
    """
    for zs in data.numbers:
        model.check_elements(zs)
    from so3krates.model_io import check_efa_structures

    model.terms.check_periodic(data.pbc)
    check_efa_structures(model.config, data.positions, data.pbc)
    graphs = GraphDataset(data, model.cutoff, batch_size, n_buckets=2, dtype=np.dtype(model.dtype),
                          **model.terms.graph_options())
    predict_fn = model.predict_function(graphs.pair_halves, stress=data.has_stress)
    energy, forces, stress, extras = predict_dataset(predict_fn, model.inference_params, graphs,
                                                     extras=True)
    metrics = error_metrics(data, energy, forces, stress)
    metrics.update(electronic_metrics(*electronic_errors(data, extras)))
    if "energy_terms" in extras:
        metrics["energy_terms_mean"] = {k: float(np.mean(v))
                                        for k, v in extras["energy_terms"].items()}
    if "energy_uncertainty" in extras:
        metrics.update(uncertainty_metrics(data, energy, forces, extras))
    return metrics, energy, forces, stress


def load_for_evaluation(path, dtype: str | None = None):
    """A model directory as a :class:`~so3krates.model_io.Model`, an ensemble directory
    (:func:`so3krates.ensemble.is_ensemble`) as an :class:`~so3krates.ensemble.Ensemble`:
    either can be given to :func:`evaluate_model`."""
    from so3krates.ensemble import load_model_or_ensemble

    return load_model_or_ensemble(path, dtype=dtype)


def evaluate_path(
    path, data: Dataset, batch_size: int = 16, dtype: str | None = None
) -> tuple[dict, np.ndarray, list[np.ndarray], np.ndarray | None]:
    """:func:`evaluate_model` of a model or ensemble directory (see
    :func:`load_for_evaluation`)."""
    return evaluate_model(load_for_evaluation(path, dtype), data, batch_size)
