"""Training throughput on 1 and N devices (``so3krates train --devices N``): rMD17 aspirin,
the aspirin benchmark's model, a fixed number of steps, structures per second measured
between the first and the last validation (compilation excluded), every run in a fresh
process, the variants interleaved over ``--rounds`` so that a noisy machine affects them alike.

Run from the repository root::

    .venv/bin/python benchmarks/devices.py --devices 1 2 --batch-size 2
    .venv/bin/python benchmarks/devices.py --devices 1 2 --legacy-src /path/to/old/src

On a CPU, N devices are N JAX CPU devices in one process (one per core). ``--legacy-src``
also runs a checkout from before ``jax.sharding`` (its ``training.processes=N``: one process
per core, gradients summed through shared memory) for the side-by-side comparison made when
that was replaced. Writes ``benchmarks/results/devices_<machine>_<date>.json``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aspirin as _aspirin  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = _aspirin.DEFAULT_DATA_DIR / _aspirin.TRAIN_FILE

WORKER = """
import json, sys
sys.path.insert(0, {src!r})
devices, processes = {devices}, {processes}
if devices > 1:
    from so3krates.training.sharding import use_cpu_devices
    use_cpu_devices(devices)
from so3krates.config import load_config
from so3krates.training.trainer import train
overrides = {overrides!r} + ([f"training.devices={{devices}}"] if devices > 1 else []) \\
    + ([f"training.processes={{processes}}"] if processes > 1 else [])
r = train(load_config(None, overrides), {output!r}, console="stderr")
print(json.dumps({{"steps": r.steps}}))
"""


def run_variant(name: str, src: Path, devices: int, processes: int, overrides: list[str]) -> dict:
    """One training run in a fresh process; structures/s between the first and last
    validation after step 0, from its metrics.csv."""
    with tempfile.TemporaryDirectory() as out:
        code = WORKER.format(src=str(src), devices=devices, processes=processes,
                             overrides=overrides, output=out)
        subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(src)})
        with open(Path(out) / "metrics.csv") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) > 0]
    (s0, t0), (s1, t1) = [(int(r["step"]), float(r["elapsed_s"])) for r in (rows[0], rows[-1])]
    return {"variant": name, "steps_per_s": (s1 - s0) / (t1 - t0)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=400, help="training steps per run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--legacy-src", type=Path, help="a src/ of a version with training.processes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    valid_every = max(args.steps // 4, 1)
    overrides = [*(o for o in _aspirin.REFERENCE_OVERRIDES if o.startswith("model.")),
                 f"data.path={args.data}", "data.n_train=950", "data.n_valid=20", "data.n_test=0",
                 f"training.batch_size={args.batch_size}", f"training.max_steps={args.steps}",
                 f"training.valid_every={valid_every}", "training.progress=false", *args.set]
    variants = [(f"{n}_devices", ROOT / "src", n, 1) for n in args.devices]
    if args.legacy_src:
        variants += [(f"{n}_processes_legacy", args.legacy_src, 1, n) for n in args.devices if n > 1]
    runs: dict[str, list[float]] = {name: [] for name, *_ in variants}
    for k in range(args.rounds):
        for name, src, devices, processes in variants:
            r = run_variant(name, src, devices, processes, overrides)
            runs[name].append(r["steps_per_s"])
            print(f"round {k}: {name}: {r['steps_per_s'] * args.batch_size:.1f} structures/s",
                  file=sys.stderr)
    result = {
        "benchmark": "devices", "date": datetime.date.today().isoformat(),
        "machine": _aspirin.machine_info(), "batch_size": args.batch_size, "steps": args.steps,
        "overrides": overrides,
        "structures_per_s": {name: {"median": statistics.median(v) * args.batch_size,
                                    "runs": [x * args.batch_size for x in v]}
                             for name, v in runs.items()},
    }
    base = result["structures_per_s"].get("1_devices", {}).get("median")
    if base:
        result["speedup_vs_1_device"] = {name: v["median"] / base
                                         for name, v in result["structures_per_s"].items()}
    out = ROOT / "benchmarks" / "results" / f"devices_{os.uname().nodename}_{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["structures_per_s"] | {"speedup": result.get("speedup_vs_1_device")},
                     indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
