"""Training-step benchmark: time per optimisation step on rMD17 aspirin, per batch size, with
glibc's default heap settings and with ``so3krates.allocator.keep_freed_memory``.

Run from the repository root::

    .venv/bin/python benchmarks/train_step.py                 # batch sizes 1, 2, 5, 8
    .venv/bin/python benchmarks/train_step.py --batch-sizes 2 5 --rounds 3
    .venv/bin/python benchmarks/train_step.py --batch-sizes 2 --heaps keep --layouts flat arrays
    .venv/bin/python benchmarks/train_step.py --batch-sizes 2 --heaps keep --set model.num_layers=3
    .venv/bin/python benchmarks/train_step.py --batch-sizes 2 --heaps keep --pairs halves sorted

Each measurement runs in a fresh process (the heap setting is process-wide); the rounds
interleave all variants so that a noisy machine affects them alike. The step is the trainer's
own (``so3krates.training.step.make_train_step``) with the reference model (F=128, 2 layers,
4 heads, degrees 1-4, 5 Å) and the default training settings, both changed by ``--set``
overrides (the aspirin benchmark's model has ``model.num_layers=3``). Progress goes to stderr;
one JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The aspirin benchmark's data location, reference model settings and machine info.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import aspirin as _aspirin  # noqa: E402

DEFAULT_DATA = _aspirin.DEFAULT_DATA_DIR / _aspirin.TRAIN_FILE
MODEL_OVERRIDES = [o for o in _aspirin.REFERENCE_OVERRIDES if o.startswith("model.")]


def time_steps(
    data_path: Path, batch_size: int, keep_memory: bool, steps: int, warmup: int, flat: bool = True,
    overrides: list[str] = (), halves: bool = True,
) -> dict:
    """Median wall time (ms) and minor page faults of ``steps`` training steps on successive
    batches, in this process; with ``keep_memory``, ``keep_freed_memory`` after the first.
    ``flat``: parameters, EMA and Adam moments as one vector each, as the trainer keeps them;
    otherwise as the model's parameter arrays (the layout before). ``overrides``: config
    ``key=value`` strings applied after the reference model's. ``halves``: batches in the
    halves pair layout and the network told so, as the trainer does; otherwise pairs sorted
    by (centre, neighbour), reordered by the network at every step (the layout before)."""
    import jax
    import numpy as np

    from so3krates.allocator import keep_freed_memory
    from so3krates.batching import GraphDataset
    from so3krates.config import load_config
    from so3krates.data import read_dataset
    from so3krates.model_io import build_module, init_params, reference_table
    from so3krates.potential import make_predict_fn
    from so3krates.training.optimizer import make_optimizer, weight_decay_mask
    from so3krates.training.statistics import fit_reference_energies, force_scale
    from so3krates.training.step import flat_training_state, make_train_step

    cfg = load_config(None, [*MODEL_OVERRIDES, *overrides, f"training.batch_size={batch_size}"])
    data = read_dataset(data_path).subset(np.arange(200))
    graphs = GraphDataset(data, cfg.model.cutoff, batch_size, cfg.training.buckets, np.float32,
                          pair_halves=halves)
    module = build_module(cfg.model, force_scale(data))
    predict = make_predict_fn(module, reference_table(fit_reference_energies(data)),
                              pair_halves=graphs.pair_halves)
    params = init_params(module, graphs.batch([0])[0], 0)
    # The weight-decay mask exists for the trainer's flat layout only (needed when it is on).
    decay_mask = weight_decay_mask(params, flat=True) if flat else None
    if flat:
        params, predict, _ = flat_training_state(predict, params)
    optimizer = make_optimizer(cfg.training, 10_000, decay_mask)
    train_step = make_train_step(predict, optimizer, cfg.training)
    state = (params, optimizer.init(params), jax.numpy.copy(params))  # the step donates all three
    batches = list(graphs.batches())
    times = []
    for k in range(warmup + steps):
        if k == 1 and keep_memory and not keep_freed_memory():  # after compilation, as the trainer
            raise RuntimeError("keep_freed_memory() has no effect here (not glibc, or MALLOC_*_ set)")
        if k == warmup:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        graph, labels = batches[k % len(batches)]
        t0 = time.perf_counter()
        *state, loss = train_step(*state, graph, labels)
        jax.block_until_ready(loss)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / steps
    return {"ms_per_step": round(ms, 2), "page_faults_per_step": round(faults),
            "structures_per_s": round(batch_size * 1e3 / ms, 1)}


def variant_name(batch_size: int, keep: bool, layout: str, pairs: str = "halves") -> str:
    suffix = "" if pairs == "halves" else f"_{pairs}_pairs"
    return f"batch{batch_size}_{'keep_freed_memory' if keep else 'glibc_default'}_{layout}{suffix}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"aspirin extxyz (default {DEFAULT_DATA})")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 5, 8])
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every variant")
    p.add_argument("--steps", type=int, default=100, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps (compilation) first")
    p.add_argument("--heaps", nargs="+", choices=("default", "keep"), default=["default", "keep"],
                   help="glibc heap settings timed (default both)")
    p.add_argument("--layouts", nargs="+", choices=("flat", "arrays"), default=["flat"],
                   help="training-state layouts timed: flat vectors (the trainer's) and/or "
                        "per-parameter arrays (default flat)")
    p.add_argument("--pairs", nargs="+", choices=("halves", "sorted"), default=["halves"],
                   help="pair layouts timed: halves (the trainer's) and/or sorted (default "
                        "halves)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override after the reference model's, e.g. --set "
                        "model.num_layers=3 or --set training.weight_decay=0.01 (repeatable)")
    p.add_argument("--worker", nargs=4, type=int,
                   metavar=("BATCH_SIZE", "KEEP_MEMORY", "FLAT", "HALVES"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        bs, keep, flat, halves = args.worker
        print(json.dumps(time_steps(args.data, bs, bool(keep), args.steps, args.warmup, bool(flat),
                                    args.set, bool(halves))))
        return 0
    if not args.data.exists():
        print(f"data file {args.data} not found (pass --data)", file=sys.stderr)
        return 2
    from so3krates.config import load_config

    # Checked here: in a worker the error would be a subprocess traceback.
    if "arrays" in args.layouts and load_config(None, args.set).training.weight_decay:
        print("--layouts arrays cannot time weight decay (its mask is built for the flat "
              "layout); drop the training.weight_decay override or time --layouts flat",
              file=sys.stderr)
        return 2

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    runs: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        for bs, keep, layout, pairs in itertools.product(
            args.batch_sizes, [h == "keep" for h in args.heaps], args.layouts, args.pairs
        ):
            name = variant_name(bs, keep, layout, pairs)
            print(f"[train-step] round {r + 1}: {name}", file=sys.stderr, flush=True)
            out = subprocess.run(
                [sys.executable, __file__, "--data", str(args.data), "--steps", str(args.steps),
                 "--warmup", str(args.warmup), "--worker", str(bs), str(int(keep)),
                 str(int(layout == "flat")), str(int(pairs == "halves")),
                 *(f"--set={o}" for o in args.set)],
                env=env, check=True, capture_output=True, text=True,
            ).stdout
            runs.setdefault(name, []).append(json.loads(out.strip().splitlines()[-1]))
    results = {}
    for name, rs in runs.items():
        ms = [x["ms_per_step"] for x in rs]
        results[name] = {"ms_per_step_min": min(ms), "ms_per_step_all": ms,
                         "page_faults_per_step": [x["page_faults_per_step"] for x in rs],
                         "structures_per_s_best": max(x["structures_per_s"] for x in rs)}
    def ratio(a: str, b: str) -> float:
        return round(results[a]["ms_per_step_min"] / results[b]["ms_per_step_min"], 2)

    for bs, layout in itertools.product(args.batch_sizes, args.layouts):
        if len(args.heaps) == 2:  # keep_freed_memory's speed-up
            results[f"batch{bs}_{layout}_speedup"] = ratio(
                variant_name(bs, False, layout), variant_name(bs, True, layout))
    for bs, keep, layout in itertools.product(
        args.batch_sizes, [h == "keep" for h in args.heaps], args.layouts
    ):
        if len(args.pairs) == 2:  # the halves pair layout's speed-up
            results[f"batch{bs}_{'keep' if keep else 'default'}_{layout}_halves_speedup"] = ratio(
                variant_name(bs, keep, layout, "sorted"), variant_name(bs, keep, layout))
    for bs, keep in itertools.product(args.batch_sizes, [h == "keep" for h in args.heaps]):
        if len(args.layouts) == 2:  # the flat training state's speed-up
            results[f"batch{bs}_{'keep' if keep else 'default'}_flat_speedup"] = ratio(
                variant_name(bs, keep, "arrays"), variant_name(bs, keep, "flat"))
    report = {
        "benchmark": "train_step",
        "machine": _aspirin.machine_info(),
        "model_overrides": MODEL_OVERRIDES,
        "overrides": args.set,
        "steps": args.steps,
        "rounds": args.rounds,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
