r"""Materials benchmark: SO3krates with stress on mlearn silicon and SNAP tantalum, next to the
published errors, MACE trained with the same wall-clock budget, diamond-Si properties (equation
of state, elastic constants) and the cost of the stress.

Run from the repository root, pinned to one core (the development VM has two, shared)::

    taskset -c 1 .venv/bin/python benchmarks/materials.py --max-time 15 --ta-max-time 10 \
        --mace-max-time 15 --si-run default \
        --si-run small:model.features=64,model.num_layers=2 \
        --ta-run small:model.features=64,model.num_layers=2 \
        --ta-run small_ew1:model.features=64,model.num_layers=2,training.energy_weight=1.0

(about 90 minutes; the committed result was assembled from three invocations of these
settings with ``--phases``/``--reuse``, each phase's command is in its ``command`` field).

MACE needs its own environment (not a dependency of this package)::

    python3.11 -m venv /tmp/mace-venv
    /tmp/mace-venv/bin/pip install torch==2.13.0 mace-torch   # the CPU build of torch

Phases (``--phases``, default all, in this order):

- ``si``: train on the published mlearn Si training split (214 structures; a seeded 10 % of it
  validates), test on the published test split (25): energy per atom, forces, stress (also
  diagonal / off-diagonal), per ``config_type``. One run per ``--si-run`` (label and extra
  overrides); the run with the lowest best validation force MAE is the "primary" one.
- ``stress_order``: the off-diagonal stress labels checked with the trained Si models: MAE of
  xy, yz, xz per config_type on the training and test structures, as labelled and with yz and
  xz swapped.
- ``eos``: diamond Si from the primary Si model (float64): E(V) over +-6 % volume,
  Birch-Murnaghan fit (V0, a0, B0), and C11, C12, C44 from central differences of the stress at
  +-0.5 % strain, atoms relaxed at fixed strained cell (BFGS, fmax 1e-3 eV/Å) before each
  stress (C44 with clamped ions too).
- ``timing``: energy + forces vs energy + forces + stress per call of ``model.predict`` (float32,
  halves layout) for diamond Si supercells of 1,000 and 10,648 atoms, calls alternated, for
  every Si model (primary first).
- ``ta``: the SNAP tantalum set (363 structures), seeded 80/10/10 % split.
- ``mace``: MACE (``mace_run_train`` from a separate virtual environment, ``--mace-python``) on
  the same Si files for the same budget, stopped at the budget and its best checkpoint turned
  into a model; tested with ``MACECalculator`` like ours.

Each phase writes ``<work-dir>/phase_<name>.json``; with ``--reuse`` phases not run now are
taken from there, so the report can be assembled from separate runs. Progress goes to stderr,
the assembled JSON to ``--output`` (default ``benchmarks/results/materials_<machine>_<date>.json``)
and a short table to stdout.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aspirin as _aspirin  # noqa: E402  (machine info and speed probe)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "materials"
SI_FILE = "mlearn_si_pbe.extxyz"
TA_FILE = "fitsnap_ta_pbe.extxyz"
EV_A3_IN_GPA = 160.21766208
PHASES = ("si", "stress_order", "eos", "timing", "ta", "mace")

# Package defaults except the cutoff, spelled out: mlearn's potentials used 4.7-5.2 Å cutoffs
# for Si (GAP 5.0 Å, SNAP/qSNAP ~5 Å); our default is already 5 Å.
MODEL_OVERRIDES = ["model.cutoff=5.0"]
# On one core a step of 5 Si structures (64 atoms, ~1,700 pairs each) costs far more than an
# aspirin step: validate and checkpoint every 100 steps so that the best model is not too
# stale when the budget ends (a validation of 21 structures costs ~1 s).
TRAIN_OVERRIDES = ["training.processes=1", "training.valid_every=100"]

# ---------------------------------------------------------------------------------------------
# Published numbers. Each entry names where it was read; numbers we could not find are None
# with a note, never filled in from memory.
# ---------------------------------------------------------------------------------------------
PUBLISHED: dict[str, Any] = {
    "si_mlearn_test_errors": {
        "reference": "Zuo et al., J. Phys. Chem. A 124, 731 (2020), doi:10.1021/acs.jpca.9b08723 "
                     "(Si test split, 25 structures)",
        "found": False,
        "note": "The per-model test errors (GAP, MTP, NNP, SNAP, qSNAP) are in the paper's "
                "figures and SI; neither the materialsvirtuallab/mlearn repository (README, "
                "notebooks) nor the stored pages/docs/code/issues we searched reproduce them as "
                "text, so they are left out rather than quoted from memory. No MACE result on "
                "the mlearn Si split was found either. The one number found is second-hand: "
                "the SNAP Si energy RMSE of the paper, 8.06 meV/atom, as quoted by a user in "
                "github.com/materialyzeai/maml issue #491 (2022-12-14), not checked against the "
                "paper.",
        "models": {
            "GAP": {"energy_mae_meV_per_atom": None, "forces_mae_eV_per_A": None},
            "MTP": {"energy_mae_meV_per_atom": None, "forces_mae_eV_per_A": None},
            "NNP": {"energy_mae_meV_per_atom": None, "forces_mae_eV_per_A": None},
            "SNAP": {"energy_mae_meV_per_atom": None, "forces_mae_eV_per_A": None,
                     "energy_rmse_meV_per_atom_quoted_in_maml_issue_491": 8.06},
            "qSNAP": {"energy_mae_meV_per_atom": None, "forces_mae_eV_per_A": None},
            "MACE": {"energy_mae_meV_per_atom": None, "forces_mae_eV_per_A": None},
        },
    },
    "si_other_models_same_split": {
        "reference": "PyXtal_FF (Yanxon et al.), examples/Si-Python/README.md in "
                     "github.com/MaterSim/PyXtal_FF: neural networks on 4 descriptors trained on "
                     "the same mlearn Si 214/25 split with energy, forces and stress; test MAE "
                     "after 4,000 BFGS epochs (train/test in their table; test shown here)",
        "models": {
            "PyXtal_FF bp-NN (ACSF)": {"energy_mae_meV_per_atom": 9.25, "forces_mae_eV_per_A": 0.1200,
                                       "stress_mae_GPa": 0.40},
            "PyXtal_FF eamd-NN": {"energy_mae_meV_per_atom": 4.81, "forces_mae_eV_per_A": 0.0908,
                                  "stress_mae_GPa": 0.34},
            "PyXtal_FF so4-NN (bispectrum)": {"energy_mae_meV_per_atom": 3.83,
                                              "forces_mae_eV_per_A": 0.0894, "stress_mae_GPa": 0.30},
            "PyXtal_FF so3-NN (SOAP-like)": {"energy_mae_meV_per_atom": 3.95,
                                             "forces_mae_eV_per_A": 0.0826, "stress_mae_GPa": 0.32},
        },
    },
    "si_dft_properties": {
        "reference": "DFT (PBE) column of the property table in MaterSim/PyXtal_FF "
                     "examples/Si-Python/README.md (same mlearn data; the mlearn paper, Zuo et al. "
                     "2020, is where these DFT values come from, not checked against the paper "
                     "itself); experiment column alongside",
        "dft": {"a0_A": 5.469, "C11_GPa": 156.0, "C12_GPa": 65.0, "C44_GPa": 76.0, "B_VRH_GPa": 95.0},
        "experiment": {"a0_A": 5.429, "C11_GPa": 167.0, "C12_GPa": 65.0, "C44_GPa": 81.0,
                       "B_VRH_GPa": 99.0},
    },
    "ta_snap_errors": {
        "reference": "Linear SNAP Ta with the hyperparameters of Thompson et al., J. Comput. Phys. "
                     "285, 316 (2015), refitted by FitSNAP's own example: "
                     "github.com/FitSNAP/FitSNAP examples/Ta_Linear_JCP2014/20May21_Standard/"
                     "Ta_metrics.md (unweighted errors)",
        "found": True,
        "note": "TRAINING-set errors of the fit on all 363 structures (no held-out test set), so "
                "not directly comparable with our test errors; the overall energy MAE is "
                "dominated by the strongly compressed Volume_* groups. The paper's own error "
                "table was not found as text.",
        "energy_mae_meV_per_atom": 112.8,
        "forces_mae_eV_per_A": 0.0758,
        "stress_mae_GPa": 6.83,
        "per_config_type_energy_mae_meV_per_atom": {
            "Displaced_A15": 2.36, "Displaced_BCC": 1.88, "Displaced_FCC": 0.62,
            "Elastic_BCC": 6.41, "Elastic_FCC": 3.62, "GSF_110": 6.52, "GSF_112": 8.68,
            "Liquid": 5.67, "Surface": 13.52, "Volume_A15": 245.8, "Volume_BCC": 328.6,
            "Volume_FCC": 812.1},
        "per_config_type_forces_mae_eV_per_A": {
            "Displaced_A15": 0.0981, "Displaced_BCC": 0.1434, "Displaced_FCC": 0.0574,
            "GSF_110": 0.0265, "GSF_112": 0.0570, "Liquid": 0.3538, "Surface": 0.0476},
    },
}


NOTES = {
    "energy_weight": "training.energy_weight (default 0.01) weighs the squared error of the "
                     "energy PER STRUCTURE (eV^2), against 0.99 x the squared force-component "
                     "error: for a 64-atom Si cell 0.01 x 64^2 = 41 per (eV/atom)^2, i.e. "
                     "energy-heavy next to MACE's per-atom weighting; for the 2-atom Ta cells it "
                     "is 0.04 per (eV/atom)^2, i.e. almost off. The Ta run small_ew1 uses 1.0.",
    "stress_weight": "training.stress_weight left at its default (100 when the data has stress; "
                     "errors in eV/A^3).",
    "model_choice": "Package defaults (128 features, 3 blocks) with cutoff 5 A vs 64 features, "
                    "2 blocks: 2-minute probes on one core gave test forces 0.55 vs 0.19 eV/A "
                    "(155 vs 457 steps); both then ran the full budget (run labels default/small).",
    "mace": "MACE settings mirror ours: r_max 5, 64x0e+64x1o (num_channels 64, max_L 1), "
            "correlation 3, 2 interactions, batch 5, float32, EMA 0.99, AMSGrad lr 0.01, E0s by "
            "least squares, loss 'stress' with energy/forces/stress weights 1/10/1000 (stress in "
            "eV/A^3, the same 100:1 stress:forces ratio as ours). Stopped at the budget (SIGINT), "
            "its best checkpoint (EMA weights) turned into a model by a restart with no epochs "
            "left; tested in float64 with MACECalculator.",
    "published": "Numbers we could not find as text are None; nothing is quoted from memory.",
}


def log(message: str) -> None:
    print(f"[materials-bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help=f"folder with {SI_FILE} and {TA_FILE} (default {DEFAULT_DATA_DIR})")
    p.add_argument("--max-time", type=float, default=15.0, metavar="MINUTES",
                   help="wall-clock budget of each Si training run (default 15)")
    p.add_argument("--ta-max-time", type=float, default=10.0, metavar="MINUTES",
                   help="budget of the Ta training run (default 10)")
    p.add_argument("--mace-max-time", type=float, default=None, metavar="MINUTES",
                   help="budget of the MACE run (default: --max-time)")
    p.add_argument("--si-run", action="append", default=[], metavar="LABEL[:KEY=VALUE,...]",
                   help="one Si training run with these overrides on top of the benchmark's "
                        "(repeatable; default one run 'default'); the run with the lowest best "
                        "validation force MAE gives the properties and timings")
    p.add_argument("--ta-run", action="append", default=[], metavar="LABEL[:KEY=VALUE,...]",
                   help="one Ta training run with these overrides (repeatable; default one run "
                        "'default')")
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"comma-separated subset of {','.join(PHASES)} (default all)")
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench_materials"),
                   help="models, temporary data files and per-phase results")
    p.add_argument("--reuse", action="store_true",
                   help="take the phases not run now from <work-dir>/phase_*.json")
    p.add_argument("--seed", type=int, default=0, help="validation / Ta split seed")
    p.add_argument("--timing-repeats", default="5,11", metavar="N[,N]",
                   help="cubic diamond supercells N x N x N (8 N^3 atoms) to time (default 5,11)")
    p.add_argument("--timing-reps", type=int, default=10, help="timed calls per variant")
    p.add_argument("--timing-warmup", type=int, default=2, help="untimed calls per variant")
    p.add_argument("--mace-python", type=Path, default=Path("/tmp/mace-venv/bin/python"),
                   help="python of the environment with mace-torch (default /tmp/mace-venv)")
    p.add_argument("--mace-args", default="", help="extra arguments for mace_run_train")
    p.add_argument("--machine", default="epyc2core", help="machine label in the output name")
    p.add_argument("--output", type=Path, default=None, help="result JSON path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every SO3krates run (repeatable)")
    args = p.parse_args(argv)
    args.phases = [s.strip() for s in args.phases.split(",") if s.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phases {sorted(unknown)}")
    args.si_runs = []
    for spec in args.si_run or ["default"]:
        label, _, rest = spec.partition(":")
        args.si_runs.append((label.strip(), [o.strip() for o in rest.split(",") if o.strip()]))
    args.timing_repeats = [int(n) for n in args.timing_repeats.split(",")]
    args.ta_runs = []
    for spec in args.ta_run or ["default"]:
        label, _, rest = spec.partition(":")
        args.ta_runs.append((label.strip(), [o.strip() for o in rest.split(",") if o.strip()]))
    if args.mace_max_time is None:
        args.mace_max_time = args.max_time
    return args


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def labels_of(atoms) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy, forces, 3x3 stress of a structure read by ASE (SinglePointCalculator)."""
    from ase.stress import voigt_6_to_full_3x3_stress

    calc = atoms.calc
    stress = np.asarray(calc.results["stress"], dtype=float)
    if stress.shape == (6,):
        stress = voigt_6_to_full_3x3_stress(stress)
    return float(calc.results["energy"]), np.asarray(calc.results["forces"], float), stress.reshape(3, 3)


def write_mace_file(frames, path: Path) -> None:
    """``frames`` with their labels as MACE's default-style keys (REF_energy, REF_forces,
    REF_stress as 9 numbers), no calculator attached."""
    import ase.io

    out = []
    for a in frames:
        e, f, s = labels_of(a)
        b = a.copy()
        b.calc = None
        b.info = {"REF_energy": e, "REF_stress": s.ravel(),
                  "config_type": a.info.get("config_type", "Default")}
        b.arrays["REF_forces"] = f
        out.append(b)
    ase.io.write(path, out, format="extxyz")


def prepare_si(args) -> dict[str, Any]:
    """Split files in the work dir: train+valid (valid last, seeded 10 %) and test for us, the
    same three as separate files with REF_ keys for MACE."""
    import ase.io

    frames = ase.io.read(args.data_dir / SI_FILE, ":")
    train = [a for a in frames if a.info.get("split") == "train"]
    test = [a for a in frames if a.info.get("split") == "test"]
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(train))
    n_valid = round(0.1 * len(train))
    valid_idx, train_idx = np.sort(perm[:n_valid]), np.sort(perm[n_valid:])
    tr = [train[i] for i in train_idx]
    va = [train[i] for i in valid_idx]
    d = args.work_dir / "data"
    d.mkdir(parents=True, exist_ok=True)
    files = {"trainvalid": d / "si_trainvalid.extxyz", "test": d / "si_test.extxyz",
             "mace_train": d / "si_mace_train.extxyz", "mace_valid": d / "si_mace_valid.extxyz",
             "mace_test": d / "si_mace_test.extxyz"}
    ase.io.write(files["trainvalid"], tr + va, format="extxyz")
    ase.io.write(files["test"], test, format="extxyz")
    write_mace_file(tr, files["mace_train"])
    write_mace_file(va, files["mace_valid"])
    write_mace_file(test, files["mace_test"])
    return {"n_train": len(tr), "n_valid": len(va), "n_test": len(test), "files": files,
            "test_config_types": [a.info.get("config_type", "?") for a in test],
            "test_frames": test}


# ---------------------------------------------------------------------------------------------
# SO3krates training and testing
# ---------------------------------------------------------------------------------------------
def train_so3krates(overrides: list[str], output: Path):
    from rich.console import Console

    from so3krates.config import load_config
    from so3krates.training.trainer import train

    config = load_config(None, overrides)
    if output.exists():
        log(f"removing previous run in {output}")
        shutil.rmtree(output)
    log(f"training for {config.training.max_time_minutes} min into {output}")
    t0 = time.monotonic()
    result = train(config, output, console=Console(stderr=True))
    return config, result, time.monotonic() - t0


def training_fields(result, config, wall_s: float) -> dict[str, Any]:
    best = result.best_valid or {}
    return {
        "steps": result.steps, "epochs": result.epochs, "stop_reason": result.stop_reason,
        "train_steps_per_s": result.steps_per_second, "wall_s": round(wall_s, 1),
        "best_valid": {k: float(v) for k, v in best.items() if np.isscalar(v)},
        "training_config": config.training.model_dump(),
        "model_config": config.model.model_dump(),
    }


def errors_summary(metrics: dict, stress_pred=None, stress_ref=None) -> dict[str, Any]:
    """Errors in the benchmark's units, with the diagonal / off-diagonal stress split."""
    out = {
        "n_structures": metrics["n_structures"],
        "energy_mae_meV_per_atom": 1e3 * metrics["energy_mae_per_atom"],
        "energy_rmse_meV_per_atom": 1e3 * metrics["energy_rmse_per_atom"],
        "forces_mae_eV_per_A": metrics["forces_mae"],
        "forces_rmse_eV_per_A": metrics["forces_rmse"],
    }
    if "stress_mae_GPa" in metrics:
        out["stress_mae_GPa"] = metrics["stress_mae_GPa"]
        out["stress_rmse_GPa"] = metrics["stress_rmse_GPa"]
    if stress_pred is not None and stress_ref is not None:
        diff = (np.asarray(stress_pred) - np.asarray(stress_ref)) * EV_A3_IN_GPA
        ok = np.isfinite(diff).all(axis=(1, 2))
        diff = diff[ok]
        iu = np.triu_indices(3, 1)
        out["stress_mae_diag_GPa"] = float(np.mean(np.abs(diff[:, [0, 1, 2], [0, 1, 2]])))
        out["stress_mae_offdiag_GPa"] = float(np.mean(np.abs(diff[:, iu[0], iu[1]])))
    return out


def evaluate_groups(model, data, groups: list[str]) -> tuple[dict, dict]:
    """Errors of ``model`` on ``data`` overall and per group label (same order as data)."""
    from so3krates.evaluate import error_metrics, evaluate_model

    metrics, energy, forces, stress = evaluate_model(model, data)
    overall = errors_summary(metrics, stress, data.stress)
    per = {}
    labels = np.asarray(groups)
    for g in sorted(set(groups)):
        idx = np.flatnonzero(labels == g)
        sub = data.subset(idx)
        m = error_metrics(sub, energy[idx], [forces[i] for i in idx],
                          None if stress is None else stress[idx])
        per[g] = errors_summary(m, None if stress is None else stress[idx], sub.stress)
    return overall, per


def phase_si(args, si) -> dict[str, Any]:
    from so3krates.data import read_dataset
    from so3krates.model_io import load_model

    runs = []
    test = read_dataset(si["files"]["test"])
    for label, extra in args.si_runs:
        out = args.work_dir / f"si_{label}"
        overrides = [*MODEL_OVERRIDES, *TRAIN_OVERRIDES,
                     f"data.path={si['files']['trainvalid']}", "data.shuffle_split=false",
                     f"data.n_train={si['n_train']}", f"data.n_valid={si['n_valid']}",
                     "data.n_test=0", f"training.max_time_minutes={args.max_time}",
                     *args.set, *extra]
        config, result, wall = train_so3krates(overrides, out)
        model = load_model(out)
        log(f"testing {out} on the {len(test)} Si test structures")
        overall, per = evaluate_groups(model, test, si["test_config_types"])
        runs.append({"label": label, "extra_overrides": extra,
                     "energy_weight": config.training.energy_weight, "model_dir": str(out),
                     "overrides": overrides, **training_fields(result, config, wall),
                     "test": overall, "test_per_config_type": per})
        log(f"{label}: test E {overall['energy_mae_meV_per_atom']:.2f} meV/atom, F "
            f"{overall['forces_mae_eV_per_A']:.4f} eV/Å, S {overall.get('stress_mae_GPa', 0):.3f} GPa")
    best = min(range(len(runs)), key=lambda i: runs[i]["best_valid"].get("valid_forces_mae", np.inf))
    return {"budget_minutes": args.max_time, "n_train": si["n_train"], "n_valid": si["n_valid"],
            "n_test": si["n_test"], "runs": runs, "primary_run": runs[best]["label"],
            "primary_chosen_by": "lowest best validation force MAE"}


def phase_stress_order(args, results: dict) -> dict[str, Any]:
    """Check of the off-diagonal stress labels with the trained Si models: the MAE of each
    off-diagonal component (xy, yz, xz) per config_type, on the training and the test
    structures, as labelled and with the yz and xz labels swapped. A label order that does
    not match the physics shows up as a component the model cannot fit that a swap fits."""
    import ase.io

    from so3krates.data import read_dataset
    from so3krates.evaluate import evaluate_model
    from so3krates.model_io import load_model

    si_res = results.get("si") or load_phase(args, "si") or {}
    files = {"train_valid": args.work_dir / "data" / "si_trainvalid.extxyz",
             "test": args.work_dir / "data" / "si_test.extxyz"}
    comps = [(0, 1), (1, 2), (0, 2)]
    out: dict[str, Any] = {"components": ["xy", "yz", "xz"], "models": {}}
    for run in si_res.get("runs", []):
        model = load_model(run["model_dir"])
        per_model = {}
        for name, path in files.items():
            groups = np.array([a.info.get("config_type", "?") for a in ase.io.read(path, ":")])
            data = read_dataset(path)
            _, _, _, stress = evaluate_model(model, data)
            pred = np.stack([stress[:, i, j] for i, j in comps], 1) * EV_A3_IN_GPA
            ref = np.stack([data.stress[:, i, j] for i, j in comps], 1) * EV_A3_IN_GPA
            per_group = {}
            for g in sorted(set(groups)):
                k = groups == g
                per_group[g] = {
                    "n": int(k.sum()),
                    "mean_abs_label_GPa": np.abs(ref[k]).mean(0).round(4).tolist(),
                    "mae_as_labelled_GPa": np.abs(pred[k] - ref[k]).mean(0).round(4).tolist(),
                    "mae_yz_xz_swapped_GPa": np.abs(pred[k] - ref[k][:, [0, 2, 1]]).mean(0).round(4).tolist(),
                }
            per_model[name] = per_group
        out["models"][run["label"]] = per_model
        log(f"stress label check with {run['label']}: done")
    return out


def phase_ta(args) -> dict[str, Any]:
    """One Ta run per ``--ta-run``; with ``--reuse`` a run whose directory holds its result
    (``bench_result.json``) is not trained again."""
    import ase.io

    from so3krates.data import read_dataset
    from so3krates.data.split import load_split
    from so3krates.model_io import load_model

    path = args.data_dir / TA_FILE
    frames = ase.io.read(path, ":")
    data = read_dataset(path)
    n = len(frames)
    n_train, n_valid = int(round(0.8 * n)), int(round(0.1 * n))
    runs = []
    for label, extra in args.ta_runs:
        out = args.work_dir / f"ta_{label}"
        saved = out / "bench_result.json"
        if args.reuse and saved.exists():
            log(f"Ta run {label}: reusing {saved}")
            runs.append(json.loads(saved.read_text()))
            continue
        overrides = [*MODEL_OVERRIDES, *TRAIN_OVERRIDES, f"data.path={path}",
                     "data.shuffle_split=true", f"data.split_seed={args.seed}",
                     f"data.n_train={n_train}", f"data.n_valid={n_valid}",
                     f"training.max_time_minutes={args.ta_max_time}", *args.set, *extra]
        config, result, wall = train_so3krates(overrides, out)
        model = load_model(out)
        test_idx = load_split(out, len(data))["test"]
        groups = [frames[i].info.get("config_type", "?") for i in test_idx]
        log(f"testing {out} on the {len(test_idx)} Ta test structures")
        overall, per = evaluate_groups(model, data.subset(test_idx), groups)
        run = {"label": label, "extra_overrides": extra,
               "energy_weight": config.training.energy_weight, "model_dir": str(out),
               "n_test": int(len(test_idx)), "overrides": overrides,
               **training_fields(result, config, wall), "rollbacks": count_rollbacks(out),
               "test": overall, "test_per_config_type": per}
        saved.write_text(json.dumps(run, indent=2, default=str))
        runs.append(run)
        log(f"Ta {label}: test E {overall['energy_mae_meV_per_atom']:.2f} meV/atom, F "
            f"{overall['forces_mae_eV_per_A']:.4f} eV/Å, S {overall.get('stress_mae_GPa', 0):.3f} GPa")
    best = min(range(len(runs)), key=lambda i: runs[i]["best_valid"].get("valid_forces_mae", np.inf))
    return {"budget_minutes": args.ta_max_time, "n_train": n_train, "n_valid": n_valid,
            "n_test": runs[best]["n_test"], "split_seed": args.seed, "runs": runs,
            "primary_run": runs[best]["label"],
            "primary_chosen_by": "lowest best validation force MAE",
            # the primary run's numbers at the top level, for the table
            "steps": runs[best]["steps"], "test": runs[best]["test"]}


def count_rollbacks(run_dir: Path) -> int | None:
    """Validations after which the divergence guard rolled back (learning rate halved while
    the step went on), from the run's metrics file; None if unknown."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    import csv

    rows = list(csv.DictReader(path.open()))
    n = 0
    for a, b in zip(rows, rows[1:]):
        try:
            if float(b["learning_rate"]) < 0.75 * float(a["learning_rate"]) * 0.99:
                n += 1
        except (KeyError, ValueError):
            pass
    return n


# ---------------------------------------------------------------------------------------------
# diamond Si: equation of state and elastic constants
# ---------------------------------------------------------------------------------------------
def elastic_from_stress(calc, a0: float, delta: float = 0.005, fmax: float = 1e-3,
                        relax: bool = True) -> dict[str, Any]:
    """C11, C12 (strain xx) and C44 (strain yz) in GPa: central differences of the stress of
    the 8-atom cubic cell at +-``delta``, atoms relaxed at fixed cell (``relax``)."""
    from ase.build import bulk
    from ase.optimize import BFGS

    def stress_at(eps: np.ndarray) -> tuple[np.ndarray, int]:
        atoms = bulk("Si", "diamond", a=a0, cubic=True)
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
        atoms.calc = calc
        steps = 0
        if relax:
            opt = BFGS(atoms, logfile=None)
            opt.run(fmax=fmax, steps=500)
            steps = opt.get_number_of_steps()
        return atoms.get_stress(voigt=True) * EV_A3_IN_GPA, steps

    out: dict[str, Any] = {"strain": delta, "relaxed": relax, "fmax_eV_per_A": fmax if relax else None}
    e_xx = np.zeros((3, 3))
    e_xx[0, 0] = delta
    e_yz = np.zeros((3, 3))
    e_yz[1, 2] = e_yz[2, 1] = delta / 2  # engineering shear strain gamma_yz = delta
    sp, n1 = stress_at(e_xx)
    sm, n2 = stress_at(-e_xx)
    ds = (sp - sm) / (2 * delta)
    out["C11_GPa"] = float(ds[0])
    out["C12_GPa"] = float(0.5 * (ds[1] + ds[2]))
    sp, n3 = stress_at(e_yz)
    sm, n4 = stress_at(-e_yz)
    ds_shear = (sp - sm) / (2 * delta)
    out["C44_GPa"] = float(ds_shear[3])
    out["B_from_Cij_GPa"] = (out["C11_GPa"] + 2 * out["C12_GPa"]) / 3
    out["bfgs_steps"] = [n1, n2, n3, n4]
    return out


def phase_eos(args, model_dir: Path) -> dict[str, Any]:
    from ase import units
    from ase.build import bulk
    from ase.eos import EquationOfState

    from so3krates.model_io import load_model

    model = load_model(model_dir, dtype="float64")
    calc = model.calculator()
    a_guess = PUBLISHED["si_dft_properties"]["dft"]["a0_A"]
    v_guess = a_guess**3
    scales = np.linspace(0.94, 1.06, 13)  # volume factors, +-6 %
    vols, energies, pressures = [], [], []
    for s in scales:
        atoms = bulk("Si", "diamond", a=a_guess * s ** (1 / 3), cubic=True)
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
        vols.append(atoms.get_volume())
        pressures.append(-float(np.mean(atoms.get_stress(voigt=True)[:3])) * EV_A3_IN_GPA)
    eos = EquationOfState(vols, energies, eos="birchmurnaghan")
    v0, e0, b0 = eos.fit()
    a0 = v0 ** (1 / 3)
    at0 = bulk("Si", "diamond", a=a0, cubic=True)
    at0.calc = calc
    residual = at0.get_stress(voigt=True) * EV_A3_IN_GPA
    log(f"EOS: a0 {a0:.4f} Å, B0 {b0 / units.GPa:.1f} GPa; elastic constants at a0")
    relaxed = elastic_from_stress(calc, a0, relax=True)
    clamped = elastic_from_stress(calc, a0, relax=False)
    dft = PUBLISHED["si_dft_properties"]["dft"]
    ours = {"a0_A": a0, "C11_GPa": relaxed["C11_GPa"], "C12_GPa": relaxed["C12_GPa"],
            "C44_GPa": relaxed["C44_GPa"], "B0_GPa": b0 / units.GPa}
    rel = {k: 100 * (ours[k] - dft[k]) / dft[k] for k in ("a0_A", "C11_GPa", "C12_GPa", "C44_GPa")}
    rel["B0_GPa_vs_B_VRH"] = 100 * (ours["B0_GPa"] - dft["B_VRH_GPa"]) / dft["B_VRH_GPa"]
    return {
        "model_dir": str(model_dir), "dtype": "float64", "cell": "8-atom cubic diamond",
        "eos": {"volume_factors": scales.tolist(), "volumes_A3": vols,
                "energies_eV": [float(e) for e in energies],
                "pressure_from_stress_GPa": pressures, "V0_A3_per_atom": v0 / 8, "a0_A": a0,
                "E0_eV_per_atom": e0 / 8, "B0_GPa": b0 / units.GPa,
                "residual_stress_at_a0_GPa": residual.tolist()},
        "elastic_relaxed": relaxed, "elastic_clamped_ions": clamped,
        "summary": ours, "dft": dft, "percent_deviation_from_dft": rel,
    }


# ---------------------------------------------------------------------------------------------
# timing: forces vs forces + stress
# ---------------------------------------------------------------------------------------------
def phase_timing(args, model_dir: Path | None, a0: float) -> dict[str, Any]:
    import jax
    from ase.build import bulk

    from so3krates.batching import single_graph
    from so3krates.model_io import load_model

    if model_dir is not None and (model_dir / "model.yaml").exists():
        model, which = load_model(model_dir), "trained"
    else:
        model, which = fresh_si_model(args), "random"
    out: dict[str, Any] = {"model": which, "model_dir": None if model_dir is None else str(model_dir),
                           "model_config": model.config.model_dump(),
                           "dtype": model.dtype, "a_A": a0, "reps": args.timing_reps,
                           "warmup": args.timing_warmup, "systems": {}}
    rng = np.random.default_rng(args.seed)
    for n in args.timing_repeats:
        atoms = bulk("Si", "diamond", a=a0, cubic=True).repeat((n, n, n))
        atoms.positions += rng.normal(scale=0.01, size=atoms.positions.shape)
        graph, cap = single_graph(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc,
                                  model.cutoff, dtype=np.dtype(model.dtype), pair_halves=True)
        graph = jax.device_put(graph)
        n_pairs = int(np.asarray(graph.pair_mask).sum())
        log(f"timing {len(atoms)} atoms ({n_pairs} directed pairs, capacity {cap.pairs})")
        first: dict[str, float] = {}
        times: dict[str, list[float]] = {"forces": [], "forces_stress": []}
        for k in range(args.timing_warmup + args.timing_reps):
            for name, stress in (("forces", False), ("forces_stress", True)):
                t0 = time.perf_counter()
                jax.block_until_ready(model.predict(graph, pair_halves=True, stress=stress))
                dt = time.perf_counter() - t0
                if k == 0:
                    first[name] = dt
                if k >= args.timing_warmup:
                    times[name].append(dt)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        out["systems"][f"atoms{len(atoms)}"] = {
            "n_atoms": len(atoms), "n_pairs": n_pairs, "supercell": [n, n, n],
            "median_ms": med, "min_ms": {k: 1e3 * min(v) for k, v in times.items()},
            "all_ms": {k: [round(1e3 * t, 2) for t in v] for k, v in times.items()},
            "first_call_s_incl_compile": first,
            "ratio_stress_over_forces": med["forces_stress"] / med["forces"],
        }
        log(f"  forces {med['forces']:.1f} ms, forces+stress {med['forces_stress']:.1f} ms, "
            f"ratio {med['forces_stress'] / med['forces']:.3f}")
    return out


def fresh_si_model(args):
    """A randomly initialised model of the benchmark's configuration (Si only; the energy
    head's last kernel random too, as in ``aspirin.fresh_model``)."""
    from ase.build import bulk

    from so3krates.batching import single_graph
    from so3krates.config import load_config
    from so3krates.model_io import Model, build_module, init_params

    cfg = load_config(None, [*MODEL_OVERRIDES, *(o for o in args.set if o.startswith("model."))]).model
    cfg = cfg.model_copy(update={"output_init": "lecun_normal"})
    atoms = bulk("Si", "diamond", a=5.47, cubic=True)
    g, _ = single_graph(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc, cfg.cutoff,
                        dtype=np.dtype(cfg.dtype))
    params = init_params(build_module(cfg, 1.0), g, args.seed)
    return Model(directory=args.work_dir / "random", config=cfg, params=params,
                 reference_energies={14: 0.0}, energy_scale=1.0, dtype=cfg.dtype)


# ---------------------------------------------------------------------------------------------
# MACE
# ---------------------------------------------------------------------------------------------
MACE_EVAL = r'''
import json, sys, time
import numpy as np
import ase.io
from ase.stress import voigt_6_to_full_3x3_stress
from mace.calculators import MACECalculator
model, test, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
calc = MACECalculator(model_paths=model, device="cpu", default_dtype=dtype)
frames = ase.io.read(test, ":")
rows = []
t0 = time.perf_counter()
for a in frames:
    e_ref = a.info["REF_energy"]; f_ref = a.arrays["REF_forces"]
    s_ref = np.asarray(a.info["REF_stress"], float).reshape(3, 3)
    b = a.copy(); b.calc = calc
    e = b.get_potential_energy(); f = b.get_forces()
    s = voigt_6_to_full_3x3_stress(b.get_stress(voigt=True))
    rows.append({"n": len(a), "config_type": a.info.get("config_type", "?"),
                 "de": float(e - e_ref), "df": (f - f_ref).ravel().tolist(),
                 "ds": (s - s_ref).ravel().tolist()})
import mace
print(json.dumps({"rows": rows, "eval_s": time.perf_counter() - t0,
                  "mace_version": getattr(mace, "__version__", None)}))
'''


def mace_errors(rows: list[dict]) -> dict[str, Any]:
    de = np.array([abs(r["de"]) / r["n"] for r in rows])
    df = np.concatenate([np.abs(r["df"]) for r in rows])
    ds = np.array([r["ds"] for r in rows]).reshape(-1, 3, 3) * EV_A3_IN_GPA
    iu = np.triu_indices(3, 1)
    return {"n_structures": len(rows), "energy_mae_meV_per_atom": 1e3 * float(de.mean()),
            "energy_rmse_meV_per_atom": 1e3 * float(np.sqrt(np.mean(de**2))),
            "forces_mae_eV_per_A": float(df.mean()),
            "forces_rmse_eV_per_A": float(np.sqrt(np.mean(df**2))),
            "stress_mae_GPa": float(np.abs(ds).mean()),
            "stress_rmse_GPa": float(np.sqrt(np.mean(ds**2))),
            "stress_mae_diag_GPa": float(np.abs(ds[:, [0, 1, 2], [0, 1, 2]]).mean()),
            "stress_mae_offdiag_GPa": float(np.abs(ds[:, iu[0], iu[1]]).mean())}


def mace_version(python: Path) -> dict[str, str | None]:
    code = ("import importlib.metadata as m, json\n"
            "v = {}\n"
            "for p in ('mace-torch', 'torch', 'e3nn', 'ase'):\n"
            "    try: v[p] = m.version(p)\n"
            "    except Exception: v[p] = None\n"
            "print(json.dumps(v))")
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def phase_mace(args, si) -> dict[str, Any]:
    python = args.mace_python
    if not python.exists():
        return {"skipped": f"{python} does not exist: no MACE environment"}
    versions = mace_version(python)
    mdir = args.work_dir / "mace"
    if mdir.exists():
        shutil.rmtree(mdir)
    mdir.mkdir(parents=True)
    f = si["files"]
    name = "mace_si"
    settings = [
        "--name", name, "--model", "MACE",
        "--train_file", str(f["mace_train"]), "--valid_file", str(f["mace_valid"]),
        "--test_file", str(f["mace_test"]),
        "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--stress_key", "REF_stress",
        "--E0s", "average", "--r_max", "5.0",
        "--num_channels", "64", "--max_L", "1", "--correlation", "3", "--num_interactions", "2",
        "--loss", "stress", "--energy_weight", "1.0", "--forces_weight", "10.0",
        "--stress_weight", "1000.0", "--compute_stress", "True",
        "--batch_size", "5", "--valid_batch_size", "5", "--lr", "0.01", "--amsgrad",
        "--ema", "--ema_decay", "0.99", "--scheduler_patience", "5",
        "--max_num_epochs", "100000", "--eval_interval", "1", "--patience", "100000",
        "--default_dtype", "float32", "--device", "cpu", "--seed", str(args.seed),
        "--error_table", "PerAtomMAEstressvirials",
        "--work_dir", str(mdir), "--checkpoints_dir", str(mdir / "checkpoints"),
        "--model_dir", str(mdir), "--log_dir", str(mdir / "logs"),
        "--results_dir", str(mdir / "results"),
        *args.mace_args.split(),
    ]
    exe = python.parent / "mace_run_train"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log(f"MACE {versions.get('mace-torch')} training for {args.mace_max_time} min")
    t0 = time.monotonic()
    with open(mdir / "train_stdout.log", "w") as fh:
        proc = subprocess.Popen([str(exe), *settings], stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            proc.wait(timeout=args.mace_max_time * 60)
            stopped = "finished"
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            stopped = "budget"
    train_wall = time.monotonic() - t0
    ckpts = sorted((mdir / "checkpoints").glob("*.pt"))
    epochs_done = count_mace_epochs(mdir)
    if not ckpts:
        return {"skipped": "MACE saved no checkpoint within the budget", "versions": versions,
                "settings": settings, "train_wall_s": train_wall, "epochs_done": epochs_done}
    best_epoch = max(int(p.stem.split("epoch-")[-1].split("_")[0]) for p in ckpts)
    if stopped == "budget":
        # Restart from the (best) checkpoint with no epochs left: MACE then only evaluates and
        # writes the .model file.
        log(f"MACE stopped at the budget after ~{epochs_done} epochs; best checkpoint: epoch "
            f"{best_epoch}; writing its model")
        fin = [*settings]
        fin[fin.index("--max_num_epochs") + 1] = "1"
        with open(mdir / "finalize_stdout.log", "w") as fh:
            subprocess.run([str(exe), *fin, "--restart_latest"], stdout=fh,
                           stderr=subprocess.STDOUT, env=env, check=True)
    model_path = mdir / f"{name}.model"
    if not model_path.exists():
        cands = sorted(mdir.glob("*.model"))
        if not cands:
            return {"skipped": "no MACE .model written", "versions": versions, "settings": settings}
        model_path = cands[0]
    script = mdir / "eval_mace.py"
    script.write_text(MACE_EVAL)
    r = subprocess.run([str(python), str(script), str(model_path), str(f["mace_test"]), "float64"],
                       capture_output=True, text=True, env=env)
    if r.returncode:
        return {"skipped": f"MACE evaluation failed: {r.stderr[-2000:]}", "versions": versions}
    ev = json.loads(r.stdout.strip().splitlines()[-1])
    rows = ev["rows"]
    per = {}
    for g in sorted({x["config_type"] for x in rows}):
        per[g] = mace_errors([x for x in rows if x["config_type"] == g])
    return {"versions": versions, "settings": " ".join(settings), "budget_minutes": args.mace_max_time,
            "stopped": stopped, "train_wall_s": round(train_wall, 1), "epochs_done": epochs_done,
            "best_checkpoint_epoch": best_epoch, "model": str(model_path),
            "eval_dtype": "float64", "test": mace_errors(rows), "test_per_config_type": per,
            "eval_s": ev["eval_s"]}


def count_mace_epochs(mdir: Path) -> int | None:
    """Epochs MACE validated (lines of its results file), None if unknown."""
    n = 0
    for p in (mdir / "results").glob("*.txt"):
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("mode") == "eval" and rec.get("epoch") is not None:
                n = max(n, int(rec["epoch"]) + 1)
    return n or None


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(report: dict) -> str:
    lines = ["", "Si test split (25 structures): E MAE meV/atom | F MAE eV/Å | stress MAE GPa"]
    si = report.get("si") or {}
    for run in si.get("runs", []):
        t = run["test"]
        lines.append(f"  SO3krates {run['label']} (E weight {run['energy_weight']:g}, {run['steps']} steps)"
                     f"  {t['energy_mae_meV_per_atom']:8.2f} | {t['forces_mae_eV_per_A']:.4f} | "
                     f"{fmt(t.get('stress_mae_GPa'), '.3f')}")
    mace = report.get("mace") or {}
    if "test" in mace:
        t = mace["test"]
        lines.append(f"  MACE {mace['versions'].get('mace-torch')} ({mace['epochs_done']} epochs)"
                     f"            {t['energy_mae_meV_per_atom']:8.2f} | {t['forces_mae_eV_per_A']:.4f} | "
                     f"{t['stress_mae_GPa']:.3f}")
    elif mace:
        lines.append(f"  MACE: {mace.get('skipped')}")
    for name, v in report["published"]["si_other_models_same_split"]["models"].items():
        lines.append(f"  {name:36s}  {v['energy_mae_meV_per_atom']:8.2f} | "
                     f"{v['forces_mae_eV_per_A']:.4f} | {v['stress_mae_GPa']:.3f}")
    pub = report["published"]["si_mlearn_test_errors"]
    for name, v in pub["models"].items():
        if v["energy_mae_meV_per_atom"] is not None:
            lines.append(f"  {name:36s}  {v['energy_mae_meV_per_atom']:8.2f} | "
                         f"{fmt(v['forces_mae_eV_per_A'], '.4f')} | -")
    if not pub["found"]:
        lines.append("  (mlearn paper GAP/MTP/NNP/SNAP/qSNAP numbers: not found, see JSON)")
    ta = report.get("ta")
    if ta and "test" in ta:
        t = ta["test"]
        lines.append(f"Ta test ({ta['n_test']} structures, seeded split), primary run "
                     f"{ta.get('primary_run')}: "
                     f"{t['energy_mae_meV_per_atom']:.2f} meV/atom | {t['forces_mae_eV_per_A']:.4f} eV/Å | "
                     f"{fmt(t.get('stress_mae_GPa'), '.3f')} GPa ({ta['steps']} steps)")
        for run in ta.get("runs", []):
            t = run["test"]
            lines.append(f"  SO3krates {run['label']} (E weight {run['energy_weight']:g}, {run['steps']} steps, "
                         f"{run.get('rollbacks')} rollbacks): {t['energy_mae_meV_per_atom']:.2f} meV/atom | "
                         f"{t['forces_mae_eV_per_A']:.4f} eV/Å | {fmt(t.get('stress_mae_GPa'), '.3f')} GPa")
        snap = report["published"]["ta_snap_errors"]
        lines.append(f"  SNAP Ta (FitSNAP example, training-set errors, all 363): "
                     f"{snap['energy_mae_meV_per_atom']:.1f} meV/atom | "
                     f"{snap['forces_mae_eV_per_A']:.4f} eV/Å | {snap['stress_mae_GPa']:.2f} GPa")
    so = report.get("stress_order") or {}
    for label, per in (so.get("models") or {}).items():
        for g, v in per.get("train_valid", {}).items():
            a, b = v["mae_as_labelled_GPa"], v["mae_yz_xz_swapped_GPa"]
            if sum(b[1:]) < 0.5 * sum(a[1:]):
                lines.append(f"stress labels: {g} (train, {label} model): yz/xz MAE {a[1]:.2f}/{a[2]:.2f} GPa as "
                             f"labelled, {b[1]:.2f}/{b[2]:.2f} with yz and xz swapped (xy {a[0]:.2f})")
    eos = report.get("eos")
    if eos and "summary" in eos:
        s, d = eos["summary"], eos["dft"]
        lines.append(f"diamond Si: a0 {s['a0_A']:.4f} Å (DFT {d['a0_A']}), B0 {s['B0_GPa']:.1f} GPa "
                     f"(DFT B_VRH {d['B_VRH_GPa']}), C11 {s['C11_GPa']:.1f} ({d['C11_GPa']}), "
                     f"C12 {s['C12_GPa']:.1f} ({d['C12_GPa']}), C44 {s['C44_GPa']:.1f} ({d['C44_GPa']}); "
                     f"C44 clamped ions {eos['elastic_clamped_ions']['C44_GPa']:.1f}")
    for label, other in ((eos or {}).get("other_models") or {}).items():
        o = other["summary"]
        lines.append(f"  ({label} model: a0 {o['a0_A']:.4f}, B0 {o['B0_GPa']:.1f}, C11 {o['C11_GPa']:.1f}, "
                     f"C12 {o['C12_GPa']:.1f}, C44 {o['C44_GPa']:.1f} GPa)")
    tm = report.get("timing")
    for label, tmod in ((tm or {}).get("models") or {}).items():
        cfg = tmod.get("model_config") or {}
        for name, v in tmod["systems"].items():
            lines.append(f"timing {label} ({cfg.get('features')} features, {cfg.get('num_layers')} "
                         f"layers) {name}: forces {v['median_ms']['forces']:.1f} ms, +stress "
                         f"{v['median_ms']['forces_stress']:.1f} ms, ratio "
                         f"{v['ratio_stress_over_forces']:.3f}")
    for name in PHASES:
        if (report.get(name) or {}).get("error"):
            lines.append(f"phase {name} FAILED: see its 'error' in the JSON")
    return "\n".join(lines)


def save_phase(args, name: str, result: dict) -> None:
    path = args.work_dir / f"phase_{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    log(f"{name}: written to {path}")


def load_phase(args, name: str) -> dict | None:
    path = args.work_dir / f"phase_{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    import jax

    import so3krates  # noqa: F401  (float64 in JAX)

    t0 = time.monotonic()
    machine = _aspirin.machine_info()
    machine["affinity"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    machine["nproc"] = len(machine["affinity"] or []) or os.cpu_count()
    machine["so3krates_commit"] = git_commit()
    si = prepare_si(args) if {"si", "mace"} & set(args.phases) else None
    results: dict[str, Any] = {}
    for phase in PHASES:
        if phase in args.phases:
            log(f"phase {phase}")
            tp = time.monotonic()
            try:
                res = run_phase(args, phase, si, results)
            except Exception as err:  # keep the other phases' results
                import traceback

                log(f"phase {phase} failed: {err!r}")
                res = {"error": traceback.format_exc()}
            res["command"] = command_line(machine)
            res["phase_wall_s"] = round(time.monotonic() - tp, 1)
            res["date"] = _dt.datetime.now().isoformat(timespec="seconds")
            results[phase] = res
            save_phase(args, phase, res)
        elif args.reuse:
            results[phase] = load_phase(args, phase)
    report = {
        "benchmark": "materials",
        "command": command_line(machine),
        "machine": machine,
        "machine_speed_at_end": _aspirin.machine_speed(),
        "jax_backend": jax.default_backend(),
        "notes": NOTES,
        "published": PUBLISHED,
        **{p: results.get(p) for p in PHASES},
        "wall_time_s_this_invocation": round(time.monotonic() - t0, 1),
    }
    output = args.output or (ROOT / "benchmarks" / "results" /
                             f"materials_{args.machine}_{_dt.date.today().isoformat()}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str))
    log(f"report written to {output}")
    print(table(report))
    return 0


def run_phase(args, phase: str, si, results: dict) -> dict[str, Any]:
    if phase == "si":
        return phase_si(args, si)
    if phase == "stress_order":
        return phase_stress_order(args, results)
    if phase == "eos":
        out = phase_eos(args, primary_si_dir(args, results))
        si_res = results.get("si") or load_phase(args, "si") or {}
        out["other_models"] = {}
        for r in si_res.get("runs", []):
            if Path(r["model_dir"]) != Path(out["model_dir"]):
                other = phase_eos(args, Path(r["model_dir"]))
                out["other_models"][r["label"]] = {k: other[k] for k in (
                    "model_dir", "summary", "elastic_clamped_ions", "percent_deviation_from_dft")}
        return out
    if phase == "timing":
        eos = results.get("eos") or load_phase(args, "eos")
        a0 = eos["summary"]["a0_A"] if eos and "summary" in eos else 5.469
        si_res = results.get("si") or load_phase(args, "si") or {}
        primary = primary_si_dir(args, results)
        models = [("primary", primary)]
        models += [(r["label"], Path(r["model_dir"])) for r in si_res.get("runs", [])
                   if Path(r["model_dir"]) != primary]
        out = {"primary_model_dir": None if primary is None else str(primary), "models": {}}
        for label, model_dir in models:
            out["models"][label] = phase_timing(args, model_dir, a0)
        return out
    if phase == "ta":
        return phase_ta(args)
    return phase_mace(args, si)


def primary_si_dir(args, results: dict) -> Path | None:
    si = results.get("si") or (load_phase(args, "si") if args.reuse or "si" not in args.phases else None)
    if si and si.get("runs"):
        run = next((r for r in si["runs"] if r["label"] == si.get("primary_run")), si["runs"][0])
        return Path(run["model_dir"])
    d = args.work_dir / f"si_{args.si_runs[0][0]}"
    return d if d.exists() else None


def command_line(machine: dict) -> str:
    """This invocation as a shell command, with the core pinning it ran under."""
    cores = machine.get("affinity") or []
    pin = f"taskset -c {','.join(map(str, cores))} " if cores and len(cores) < (os.cpu_count() or 0) else ""
    return pin + " ".join([".venv/bin/python" if ".venv" in sys.executable else sys.executable, *sys.argv])


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
