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
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aspirin as _aspirin  # noqa: E402  (machine info and speed probe)
from materials_common import (  # noqa: E402
    DEFAULT_DATA_DIR, EV_A3_IN_GPA, MODEL_OVERRIDES, NOTES, PHASES, PUBLISHED, ROOT, SI_FILE,
    TA_FILE, TRAIN_OVERRIDES, log,
)
from materials_crystal import phase_eos, phase_timing  # noqa: E402
from materials_mace import phase_mace, write_mace_file  # noqa: E402
from materials_report import table  # noqa: E402


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
