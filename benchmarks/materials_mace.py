"""The MACE phase of the materials benchmark (``materials.py``): MACE trained on the same Si
files with the same wall-clock budget in its own virtual environment, tested like ours."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from materials_common import EV_A3_IN_GPA, labels_of, log

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
