"""Cost of a committee: M members in one compiled call against one model's call.

Times, calls interleaved (so that a loaded machine affects all alike), the median of
``--reps`` calls after compilation of:

- ``single``: ``Model.predict`` (parameters compiled in) on a device-resident graph in the
  halves layout;
- ``vmap``, ``map``: ``Ensemble.predict`` of M members on the same graph, one call, mapped
  over the stacked parameters with ``jax.vmap`` or ``jax.lax.map`` (``Ensemble(batching=)``);
- ``loop``: the members one after another through one jitted ``predict_fn(params, graph)``
  (what a Python loop over models costs at best);

and, with ``--ase``, ``atoms.get_forces()`` through the single-model and the ensemble
calculator (``batching="auto"``; jittered positions). Systems: one rMD17 aspirin (from
``../shared/data``) and grids of aspirins (``benchmarks/aspirin.py``'s layout); untrained
perturbed members of the reference architecture (the default ``ModelConfig``) in float32:
timing does not depend on training. Also records the largest difference between a member's
forces from the ensemble call and from its own call (float32 rounding).

    .venv/bin/python benchmarks/ensemble.py --members 4 --grids 5 48 > ensemble.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ASPIRIN = HERE.parents[1] / "shared" / "data" / "rmd17_aspirin_test.xyz"


def log(message: str) -> None:
    print(f"[ensemble-bench] {message}", file=sys.stderr, flush=True)


def members(m: int, dtype: str, radial_knots: int | None = None):
    """``m`` untrained members of the reference architecture: one initialisation, each
    member's parameters perturbed by its own seed."""
    import jax
    from ase.build import molecule

    from so3krates.batching import single_graph
    from so3krates.config import ModelConfig
    from so3krates.model_io import Model, build_module, init_params

    cfg = ModelConfig(dtype=dtype)
    a = molecule("CH3CH2OH")
    g, _ = single_graph(a.numbers, a.positions, np.zeros((3, 3)), np.zeros(3, bool), cfg.cutoff,
                        dtype=np.dtype(dtype))
    base = init_params(build_module(cfg), g, 0)
    refs = {1: -13.6, 6: -1030.0, 8: -2040.0}
    out = []
    for s in range(m):
        leaves, tree = jax.tree.flatten(base)
        keys = jax.random.split(jax.random.PRNGKey(s + 1), len(leaves))
        params = tree.unflatten([x + 0.02 * jax.random.normal(k, x.shape, x.dtype)
                                 for x, k in zip(leaves, keys)])
        out.append(Model(f"member{s}", cfg, params, refs, 1.0, dtype, radial_knots=radial_knots))
    return out


def interleaved(fns: dict, reps: int, warmup: int) -> dict[str, float]:
    """Median ms of each function, calls interleaved, after ``warmup`` rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for k in range(warmup + reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if k >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: round(1e3 * statistics.median(t), 3) for name, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--grids", type=int, nargs="+", default=[1, 5, 48],
                   help="aspirin molecules per system (1, 5: 105 atoms, 48: 1,008 atoms)")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--radial-knots", type=int, help="spline intervals (default: the dtype's)")
    p.add_argument("--ase", action="store_true", help="also time the ASE calculators")
    args = p.parse_args(argv)

    sys.path.insert(0, str(HERE))
    import jax
    from ase.io import read

    import so3krates  # noqa: F401
    from aspirin import molecule_grid
    from md import grid_shape
    from so3krates.batching import single_graph
    from so3krates.compile import jit
    from so3krates.ensemble import Ensemble

    aspirin = read(ASPIRIN, index=0)
    ms = members(args.members, args.dtype, args.radial_knots)
    ens = {b: Ensemble(ms, batching=b) for b in ("vmap", "map")}
    one = ms[0]
    loop_fn = jit(one._predict_fn(True, False, False))
    result = {"members": args.members, "dtype": args.dtype, "device": jax.devices()[0].device_kind,
              "systems": {}}
    for n_mol in args.grids:
        atoms = aspirin if n_mol == 1 else molecule_grid(aspirin, grid_shape(n_mol))
        graph, _ = single_graph(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc,
                                one.cutoff, dtype=np.dtype(one.dtype), pair_halves=True)
        graph = jax.device_put(graph)
        log(f"{len(atoms)} atoms, {int(graph.pair_mask.sum())} pairs: compiling")
        fns = {
            "single": lambda: jax.block_until_ready(one.predict(graph, pair_halves=True)),
            "vmap": lambda: jax.block_until_ready(ens["vmap"].predict(graph, pair_halves=True)),
            "map": lambda: jax.block_until_ready(ens["map"].predict(graph, pair_halves=True)),
            "loop": lambda: jax.block_until_ready(
                [loop_fn(m.inference_params, graph) for m in ms]),
        }
        out = {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[f"compile_{name}_s"] = round(time.perf_counter() - t0, 1)
        # Each member through the one call agrees with its own evaluation.
        pv, pm = ens["vmap"].predict(graph, pair_halves=True), ens["map"].predict(graph, True)
        own = [loop_fn(m.inference_params, graph) for m in ms]
        out["max_abs_force_diff_vmap_map_own"] = float(max(
            np.abs(np.asarray(p.members.forces[k]) - np.asarray(o.forces)).max()
            for p in (pv, pm) for k, o in enumerate(own)))
        log(f"{len(atoms)} atoms: timing")
        out.update(interleaved(fns, args.reps, args.warmup))
        if args.ase:
            calcs = {"ase_single": one.calculator(), "ase_ensemble": Ensemble(ms).calculator()}
            copies = {k: atoms.copy() for k in calcs}
            rng = np.random.default_rng(0)
            for k, c in calcs.items():
                copies[k].calc = c
                copies[k].get_forces()

            def ase_call(k):
                a = copies[k]
                a.positions = atoms.positions + rng.normal(scale=0.01, size=atoms.positions.shape)
                a.get_forces()

            out.update(interleaved({k: (lambda k=k: ase_call(k)) for k in calcs}, args.reps,
                                   args.warmup))
        for name in ("vmap", "map", "loop") + (("ase_ensemble",) if args.ase else ()):
            base = out["ase_single"] if name.startswith("ase") else out["single"]
            out[f"ratio_{name}_over_single"] = round(out[name] / base, 2)
        result["systems"][f"{len(atoms)}_atoms"] = out
        log(json.dumps(out))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
