"""Where the time of one energy + forces evaluation goes: a per-operation profile.

Run from the repository root::

    .venv/bin/python benchmarks/op_profile.py                        # fresh reference model
    .venv/bin/python benchmarks/op_profile.py --model runs/bench_aspirin --system grid
    taskset -c 0 .venv/bin/python benchmarks/op_profile.py           # one core

Times ``model.predict_halves_fn`` (``--sorted``: ``model.predict_fn`` on sorted pairs) on
the first rMD17 aspirin test configuration (``--system aspirin``) or on the benchmark's grid of 48 aspirins (``grid``, 1,008 atoms), then records
``--calls`` calls with ``jax.profiler`` and sums the events of XLA's executor threads per
compiled operation (on the CPU, one event per thunk: a fusion, a dot, a scatter, ...). Prints
one JSON object: the median wall time without the profiler, XLA's own FLOP count, the number
of operations per call, their summed time per call (threads added; with the profiler's own
overhead), the time per kind of operation (the HLO name without its number), and the
``--top`` most expensive operations with their HLO text (shapes).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aspirin as _aspirin  # noqa: E402  (data location, reference settings, timed systems)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None,
                   help="trained model directory (default: fresh reference model)")
    p.add_argument("--data-dir", type=Path, default=_aspirin.DEFAULT_DATA_DIR,
                   help="directory with rmd17_aspirin_test.xyz")
    p.add_argument("--system", choices=("aspirin", "grid"), default="aspirin")
    p.add_argument("--calls", type=int, default=50, help="profiled calls (default 50)")
    p.add_argument("--reps", type=int, default=200, help="timed calls without profiler")
    p.add_argument("--top", type=int, default=25, help="operations listed (default 25)")
    p.add_argument("--seed", type=int, default=0, help="seed of a fresh model's parameters")
    p.add_argument("--sorted", action="store_true",
                   help="profile predict_fn on sorted pairs (default: predict_halves_fn on "
                        "the halves layout)")
    return p.parse_args(argv)


def operation_events(trace_dir: str) -> dict[str, list[float]]:
    """{operation name: [count, total ns]} over the XLA executor threads of a trace."""
    from jax.profiler import ProfileData

    (path,) = Path(trace_dir).rglob("*.xplane.pb")
    ops: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for plane in ProfileData.from_file(str(path)).planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):  # XLA's thread pools, not Python
                continue
            for event in line.events:
                if not event.name.startswith("ThunkExecutor"):  # the enclosing executor spans
                    ops[event.name][0] += 1
                    ops[event.name][1] += event.duration_ns
    return ops


def hlo_lines(compiled_text: str) -> dict[str, str]:
    """{instruction name: its HLO text after '='} of an optimised module."""
    out = {}
    for line in compiled_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ase.io
    import jax

    import so3krates  # noqa: F401  (enables float64 in JAX)
    from so3krates.config import load_config
    from so3krates.model_io import load_model

    molecule = ase.io.read(args.data_dir / _aspirin.TEST_FILE, index=0)
    if args.model is None:
        config = load_config(None, _aspirin.REFERENCE_OVERRIDES)
        model = _aspirin.fresh_model(config.model, molecule, Path("fresh"), args.seed)
    else:
        model = load_model(args.model)
    atoms = molecule if args.system == "aspirin" else _aspirin.molecule_grid(molecule)
    graph = _aspirin.device_graph(model, atoms, pair_halves=not args.sorted)
    predict_fn = model.predict_fn if args.sorted else model.predict_halves_fn

    def call() -> None:
        jax.block_until_ready(predict_fn(model.inference_params, graph))

    wall_ms = _aspirin.median_ms(call, args.reps, warmup=5)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(args.calls):
            call()
        jax.profiler.stop_trace()
        ops = operation_events(trace_dir)
    compiled = predict_fn.lower(model.inference_params, graph).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    hlo = hlo_lines(compiled.as_text())

    per_call = {k: (c / args.calls, ns / args.calls / 1e3) for k, (c, ns) in ops.items()}
    kinds: dict[str, float] = collections.defaultdict(float)
    for name, (_, us) in per_call.items():
        kinds[re.sub(r"[._]\d+$", "", name)] += us
    top = sorted(per_call.items(), key=lambda kv: -kv[1][1])[: args.top]
    report = {
        "machine": _aspirin.machine_info(),
        "system": args.system,
        "n_atoms": len(atoms),
        "n_pairs": int(np.sum(np.asarray(graph.pair_mask))),
        "pair_capacity": int(graph.pair_mask.shape[0]),
        "wall_ms_median": round(wall_ms, 3),
        "xla_flops": cost.get("flops"),
        "ops_per_call": round(sum(c for c, _ in per_call.values()), 1),
        "op_time_us_per_call": round(sum(us for _, us in per_call.values()), 1),
        "op_time_us_by_kind": {k: round(v, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"name": k, "us_per_call": round(us, 1), "count_per_call": c,
                     "hlo": hlo.get(k, "")[:200]} for k, (c, us) in top],
        "model": str(args.model) if args.model else "fresh reference model",
        "layout": "sorted" if args.sorted else "halves",
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
