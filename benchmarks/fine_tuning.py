"""Fine-tuning against training from scratch (``so3krates train --init-from``).

A model trained on the shipped GFN2-xTB ethanol set (800 structures of semi-empirical MD) is
fine-tuned on MD17 ethanol (PBE+vdW-TS, ``../shared/data/md17_ethanol_2000.npz``) with a few
hundred training structures, under each freeze strategy and learning rate, next to new models
of the same architecture trained from scratch on the same split for the same number of steps.
Recorded: validation errors at step 0 and at every validation, test errors of the saved model
(the best EMA weights) on held-out structures, wall time. Run from the repository root::

    .venv/bin/python benchmarks/fine_tuning.py --json benchmarks/results/fine_tuning_epyc_DATE.json

Progress goes to stderr; the JSON is written after every run (and printed at the end); runs
already in an existing ``--json`` are skipped, so a second call with more runs (``--warmup
100``) adds them. The committed result (``fine_tuning_epyc_2026-12-08.json``) came from::

    J=benchmarks/results/fine_tuning_epyc_2026-12-08.json W=/tmp/ft/bench
    .venv/bin/python benchmarks/fine_tuning.py --json $J --workdir $W
    .venv/bin/python benchmarks/fine_tuning.py --json $J --workdir $W \
        --warmup 100 --learning-rates 3e-3,1e-3

(both with the defaults: a 16-feature, 2-block model, 2000 steps on 700 GFN2-xTB
structures; 200 / 100 / 1000 MD17 structures to train / validate / test, 1000 steps at
batch 4).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MD17 = ROOT.parent / "shared" / "data" / "md17_ethanol_2000.npz"


def arch(features: int, layers: int) -> list[str]:
    return [f"model.features={features}", f"model.num_layers={layers}", "model.num_radial=8",
            "model.degrees=[1,2]", "model.cutoff=4.0"]


def read_metrics(directory: Path) -> list[dict]:
    with open(directory / "metrics.csv") as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--md17", type=Path, default=DEFAULT_MD17)
    p.add_argument("--workdir", type=Path, default=Path("runs/fine_tuning_benchmark"))
    p.add_argument("--json", type=Path)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--base-steps", type=int, default=2000)
    p.add_argument("--steps", type=int, default=1000, help="steps of every target run")
    p.add_argument("--valid-every", type=int, default=200)
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-valid", type=int, default=100)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--learning-rates", default="3e-3,1e-3,3e-4")
    p.add_argument("--freeze", default="none,embedding,blocks:1,all_but_readout")
    p.add_argument("--warmup", type=int, default=0,
                   help="also fine-tune (freeze none) at every learning rate with this warm-up")
    args = p.parse_args(argv)

    from so3krates.config import load_config
    from so3krates.data import read_dataset
    from so3krates.data.split import load_split
    from so3krates.datasets import shipped_dataset_path
    from so3krates.evaluate import evaluate_model
    from so3krates.model_io import load_model
    from so3krates.training.trainer import train

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    args.workdir.mkdir(parents=True, exist_ok=True)
    model_args = arch(args.features, args.layers)
    result = {
        "benchmark": "fine_tuning",
        "command": " ".join(sys.argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"node": platform.node(), "processor": platform.processor() or platform.machine()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": [],
    }
    if args.json and args.json.exists():
        previous = json.loads(args.json.read_text())
        result["runs"] = previous["runs"]
        result["command"] = [*(previous["command"] if isinstance(previous["command"], list)
                               else [previous["command"]]), result["command"]]

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1))

    base = args.workdir / "base_gfn2"
    if not (base / "model.yaml").exists():
        t0 = time.monotonic()
        train(load_config(None, [
            f"data.path={shipped_dataset_path()}", "data.n_train=700", "data.n_valid=50",
            "data.n_test=50", *model_args, "training.batch_size=4",
            f"training.max_steps={args.base_steps}", "training.valid_every=500",
            "training.decay_steps=100000", "training.progress=false"]), base, console="stderr")
        log(f"base model: {time.monotonic() - t0:.0f} s")
    result["base"] = {k: v for k, v in read_metrics(base)[-1].items() if v == v}  # no NaN

    md17 = read_dataset(args.md17, energy_unit="kcal/mol")
    common = [f"data.path={args.md17}", "data.energy_unit=kcal/mol",
              f"data.n_train={args.n_train}", f"data.n_valid={args.n_valid}",
              f"data.n_test={args.n_test}", "training.batch_size=4",
              f"training.max_steps={args.steps}", f"training.valid_every={args.valid_every}",
              "training.progress=false"]
    lrs = args.learning_rates.split(",")
    runs = [("scratch", "none", lr, 0) for lr in ("3e-3", "1e-3")]
    runs += [("fine", f, lr, 0) for f in args.freeze.split(",") for lr in lrs]
    runs += [("fine", "none", lr, args.warmup) for lr in lrs if args.warmup]
    done = {run["name"] for run in result["runs"]}
    for kind, freeze, lr, warmup in runs:
        name = f"{kind}_{freeze.replace(':', '')}_lr{lr}" + (f"_warmup{warmup}" if warmup else "")
        if name in done:
            continue
        out = args.workdir / name
        extra = (model_args if kind == "scratch"
                 else [f"training.init_from={base}", f"training.freeze={freeze}"])
        t0 = time.monotonic()
        train(load_config(None, [*common, *extra, f"training.learning_rate={lr}",
                                 f"training.warmup_steps={warmup}"]), out, console="stderr")
        wall = time.monotonic() - t0
        model = load_model(out)
        test = md17.subset(load_split(out, len(md17))["test"])
        metrics, *_ = evaluate_model(model, test, 16)
        rows = read_metrics(out)
        run = {"name": name, "kind": kind, "freeze": freeze, "learning_rate": float(lr),
               "warmup_steps": warmup, "wall_s": wall,
               "valid": [{k: r[k] for k in ("step", "valid_loss", "valid_energy_mae",
                                             "valid_forces_mae")} for r in rows],
               "test_energy_mae": metrics["energy_mae"], "test_forces_mae": metrics["forces_mae"],
               "n_test": metrics["n_structures"]}
        result["runs"].append(run)
        log(f"{name}: valid forces MAE {rows[0]['valid_forces_mae'] * 1e3:.1f} -> "
            f"{rows[-1]['valid_forces_mae'] * 1e3:.1f} meV/Å; test energy / forces MAE "
            f"{metrics['energy_mae'] * 1e3:.1f} meV / {metrics['forces_mae'] * 1e3:.1f} meV/Å "
            f"({wall:.0f} s)")
        save()
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
