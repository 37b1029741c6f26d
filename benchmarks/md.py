"""MD benchmark: speed of the JAX MD engine against ASE, and stability of long NVT runs.

Run from the repository root::

    PYTHONPATH=src .venv/bin/python benchmarks/md.py                      # speed (default)
    PYTHONPATH=src .venv/bin/python benchmarks/md.py --stability --model DIR

Progress goes to stderr; one JSON object with the results is printed on stdout at the end.
See ``benchmarks/README.md`` for what is measured.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

# The helpers of the aspirin benchmark (data location, grid of molecules, fresh model,
# machine info) are reused; importing it loads nothing heavy.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import aspirin as _aspirin  # noqa: E402

DEFAULT_DATA_DIR = _aspirin.DEFAULT_DATA_DIR
TEST_FILE = _aspirin.TEST_FILE
SYSTEMS = ("aspirin", "1k", "10k")
MOLECULES = {"aspirin": 1, "1k": 48}  # "10k": --molecules-10k (default 480)
ENGINE_STEPS = {"aspirin": 2000, "1k": 100, "10k": 20}
ASE_STEPS = {"aspirin": 200, "1k": 10, "10k": 2}


def log(message: str) -> None:
    """Progress message on stderr (stdout is reserved for the JSON result)."""
    print(f"[md-bench] {message}", file=sys.stderr, flush=True)


def _steps_table(text: str | None, default: dict[str, int]) -> dict[str, int]:
    """``"aspirin=2000,1k=100"`` -> dict, on top of ``default``."""
    table = dict(default)
    for item in filter(None, (text or "").split(",")):
        name, value = item.split("=", 1)
        if name not in SYSTEMS:
            raise SystemExit(f"unknown system {name!r} in a steps table (known: {', '.join(SYSTEMS)})")
        table[name] = int(value)
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--speed", action="store_true", help="speed benchmark (the default mode)")
    mode.add_argument("--stability", action="store_true",
                      help="long NVT Langevin runs with the stability monitor (needs --model)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help=f"folder with {TEST_FILE} (default {DEFAULT_DATA_DIR})")
    p.add_argument("--model", type=Path, default=None,
                   help="trained model directory (speed default: fresh reference-size parameters)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="precision of the network (default float32)")
    p.add_argument("--radial-knots", type=int, default=None,
                   help="spline intervals of the radial filters; 0: the exact network "
                        "(default: the package's, tabulated in float32)")
    p.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (default 0.01)")
    p.add_argument("--skin", type=float, default=1.0, help="Verlet skin, Å (default 1.0)")
    p.add_argument("--stride", type=int, default=10, help="steps between frames (default 10)")
    p.add_argument("--chunk-frames", type=int, default=100,
                   help="frames per compiled chunk (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed (speed mode; fresh parameters)")
    # speed
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help="comma-separated subset of aspirin,1k,10k (default all)")
    p.add_argument("--molecules-10k", type=int, default=480,
                   help="aspirin molecules in the '10k' system (default 480: 10,080 atoms)")
    p.add_argument("--temperature", type=float, default=300.0, help="K, speed mode (default 300)")
    p.add_argument("--engine-steps", default=None, metavar="SYS=N,...",
                   help="timed engine steps, e.g. aspirin=2000,1k=100,10k=20 (these are the defaults)")
    p.add_argument("--ase-steps", default=None, metavar="SYS=N,...",
                   help="timed ASE steps, e.g. aspirin=200,1k=10,10k=2 (these are the defaults)")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiply all step counts (e.g. 0.01 for a smoke test)")
    p.add_argument("--ase-warmup", type=int, default=2, help="untimed ASE steps first (default 2)")
    p.add_argument("--no-ase", action="store_true", help="skip the ASE path")
    p.add_argument("--monitor", choices=("auto", "on", "off"), default="auto",
                   help="engine's bond stability monitor in speed runs (auto: on with --model, "
                        "off with fresh random weights, which hold no molecule together)")
    p.add_argument("--no-memory-analysis", action="store_true",
                   help="skip XLA's memory analysis of the compiled chunk")
    # stability
    p.add_argument("--time-ps", type=float, default=100.0, help="ps per stability run (default 100)")
    p.add_argument("--temperatures", default="300,500", help="K, stability runs (default 300,500)")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the stability runs (default 0,1,2)")
    p.add_argument("--cpu", type=int, metavar="CORE",
                   help="speed mode: compute on this CPU core only, one thread (as `so3krates md --cpu`)")
    p.add_argument("--parallel", type=int, default=1,
                   help="stability runs in this many processes, each single-threaded XLA (default 1)")
    p.add_argument("--traj-dir", type=Path, default=None,
                   help="write every --traj-every-th frame of each stability run here (extxyz)")
    p.add_argument("--traj-every", type=int, default=100,
                   help="frames between written frames (default 100; × --stride steps)")
    p.add_argument("--log-every-ps", type=float, default=10.0,
                   help="progress message interval in stability runs (default 10 ps)")
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in args.systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s!r} (known: {', '.join(SYSTEMS)})")
    args.engine_steps = _steps_table(args.engine_steps, ENGINE_STEPS)
    args.ase_steps = _steps_table(args.ase_steps, ASE_STEPS)
    args.temperatures = [float(t) for t in args.temperatures.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.stability and args.model is None:
        p.error("--stability needs --model DIR (a trained aspirin model)")
    return args


# -- shared ----------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (``ru_maxrss``), MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def reference_model_config(dtype: str):
    """The reference hyperparameters of ``aspirin.py`` (model part only), in ``dtype``."""
    from so3krates.config import load_config

    model_overrides = [o for o in _aspirin.REFERENCE_OVERRIDES if o.startswith("model.")]
    return load_config(None, [*model_overrides, f"model.dtype={dtype}"]).model


def get_model(args: argparse.Namespace, molecule):
    """``--model`` loaded in ``--dtype``, or fresh parameters with the reference settings."""
    from so3krates.model_io import load_model

    if args.model is not None:
        log(f"loading model {args.model} ({args.dtype})")
        return load_model(args.model, dtype=args.dtype, radial_knots=args.radial_knots), str(args.model)
    log(f"fresh model with the reference hyperparameters ({args.dtype}, seed {args.seed})")
    config = reference_model_config(args.dtype)
    return _aspirin.fresh_model(config, molecule, Path("fresh"), args.seed), None


def grid_shape(n: int) -> tuple[int, int, int]:
    """The most cube-like (a, b, c) with a·b·c = n, largest first (48 -> (4, 4, 3))."""
    best = (n, 1, 1)
    for a in range(1, n + 1):
        if n % a:
            continue
        for b in range(1, n // a + 1):
            if (n // a) % b:
                continue
            shape = tuple(sorted((a, b, n // a // b), reverse=True))
            if shape[0] / shape[2] < best[0] / best[2]:
                best = shape
    return best


def build_system(name: str, molecule, args: argparse.Namespace):
    """aspirin: the molecule; 1k: 48 molecules on aspirin.py's grid; 10k: --molecules-10k."""
    if name == "aspirin":
        return molecule.copy()
    n = MOLECULES.get(name, args.molecules_10k)
    shape = _aspirin.GRID_SHAPE if n == 48 else grid_shape(n)
    return _aspirin.molecule_grid(molecule, shape, _aspirin.GRID_GAP)


def rates(ms_per_step: float, n_atoms: int, timestep_fs: float) -> dict[str, float]:
    """ms/step, steps/s, ns/day and atom-steps/s from ms/step."""
    steps_per_s = 1e3 / ms_per_step
    return {
        "ms_per_step": round(ms_per_step, 4),
        "steps_per_s": round(steps_per_s, 3),
        "ns_per_day": round(steps_per_s * 86400 * timestep_fs * 1e-6, 4),
        "atom_steps_per_s": round(steps_per_s * n_atoms, 1),
        "us_per_atom_step": round(1e3 * ms_per_step / n_atoms, 4),
    }


# -- speed -----------------------------------------------------------------------------------


def round_steps(n: float, unit: int) -> int:
    """``n`` rounded up to a positive multiple of ``unit``."""
    return max(unit, unit * math.ceil(n / unit))


def xla_memory(sim, n_frames: int) -> dict[str, Any] | None:
    """XLA's memory analysis of the compiled chunk (bytes), or None where unavailable."""
    import jax.numpy as jnp

    try:
        compiled = sim._compiled_chunk(n_frames).lower(sim.state, jnp.asarray(-1)).compile()
        stats = compiled.memory_analysis()
    except Exception as exc:  # noqa: BLE001 (optional diagnostics)
        log(f"  XLA memory analysis unavailable: {exc!r}")
        return None
    if stats is None:
        return None
    keys = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
            "generated_code_size_in_bytes")
    out = {k: int(getattr(stats, k)) for k in keys if hasattr(stats, k)}
    if "temp_size_in_bytes" in out:
        out["temp_size_mb"] = round(out["temp_size_in_bytes"] / 2**20, 2)
    return out


def time_engine(model, atoms, n_steps: int, args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up chunk (compilation), then ``n_steps`` timed steps of the JAX engine."""
    from so3krates.md.engine import Simulation
    from so3krates.md.integrators import Ensemble
    from so3krates.md.stability import StabilityCriteria
    from so3krates.md.system import System, model_energy_fn

    monitor = args.monitor == "on" or (args.monitor == "auto" and args.model is not None)
    stride = args.stride
    chunk_steps = min(round_steps(n_steps, stride), args.chunk_frames * stride)
    n_steps = round_steps(n_steps, chunk_steps)  # whole chunks of one compiled size
    system = System.from_atoms(atoms)
    ensemble = Ensemble("langevin", timestep=args.timestep, temperature=args.temperature,
                        friction=args.friction)
    t0 = time.perf_counter()
    sim = Simulation(model_energy_fn(model, system), system, atoms.positions, ensemble,
                     model.cutoff, skin=args.skin, stride=stride,
                     chunk_frames=chunk_steps // stride, seed=args.seed,
                     monitor=StabilityCriteria() if monitor else None)
    setup_s = time.perf_counter() - t0
    log(f"  engine: warm-up chunk of {chunk_steps} steps (compilation)")
    warm = sim.run(chunk_steps)
    log(f"  engine: warm-up took {warm.wall_seconds:.1f} s; timing {n_steps} steps")
    temps: list[np.ndarray] = []
    summary = sim.run(n_steps, on_frames=lambda f: temps.append(f.temperature))
    out = {
        "steps": summary.steps,
        **rates(summary.ms_per_step, len(atoms), args.timestep),
        "wall_seconds": round(summary.wall_seconds, 3),
        "setup_seconds": round(setup_s, 3),
        "warmup_steps": warm.steps,
        "warmup_seconds": round(warm.wall_seconds, 3),
        "reallocations": summary.reallocations,
        "reallocations_warmup": warm.reallocations,
        "monitor": monitor,
        "stable": bool(warm.stable and summary.stable),
        "mean_temperature_K": round(float(np.mean(np.concatenate(temps))), 1) if temps else None,
        "chunk_steps": chunk_steps,
        "neighbour_capacity": int(sim.spec.capacity),
        "max_neighbours": int(sim.spec.max_neighbours),
    }
    if not out["stable"]:
        log("  engine: WARNING the run went unstable: the timing is not valid "
            "(try --monitor off, or a trained --model)")
    log(f"  engine: {out['ms_per_step']:.3f} ms/step, {out['ns_per_day']:.3f} ns/day, "
        f"{out['us_per_atom_step']:.3f} µs/atom-step, {out['reallocations']} reallocations")
    if not args.no_memory_analysis:
        t1 = time.perf_counter()
        out["xla_memory"] = xla_memory(sim, chunk_steps // stride)
        log(f"  engine: XLA memory analysis took {time.perf_counter() - t1:.1f} s")
    return out


def time_ase(model, atoms, n_steps: int, args: argparse.Namespace) -> dict[str, Any]:
    """``ase.md.langevin.Langevin`` with ``model.calculator()``: warm-up, then ``n_steps``."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = atoms.copy()
    atoms.calc = model.calculator()
    rng = np.random.default_rng(args.seed)
    with warnings.catch_warnings():  # ASE 3.28+ deprecation notes (fixcm, thermalize_momenta)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature, rng=rng)
        Stationary(atoms)
        dyn = Langevin(atoms, timestep=args.timestep * units.fs, temperature_K=args.temperature,
                       friction=args.friction / units.fs, rng=rng)
    log(f"  ASE: {args.ase_warmup} warm-up steps, then {n_steps} timed")
    t0 = time.perf_counter()
    atoms.get_forces()  # first evaluation (compilation)
    dyn.run(args.ase_warmup)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dyn.run(n_steps)
    wall = time.perf_counter() - t0
    out = {
        "steps": n_steps,
        **rates(1e3 * wall / n_steps, len(atoms), args.timestep),
        "wall_seconds": round(wall, 3),
        "warmup_seconds": round(warm_s, 3),
    }
    log(f"  ASE: {out['ms_per_step']:.3f} ms/step, {out['us_per_atom_step']:.3f} µs/atom-step")
    return out


def run_speed(args: argparse.Namespace, molecule) -> dict[str, Any]:
    """All selected systems: engine, ASE, memory; then the ratios."""
    model, model_dir = get_model(args, molecule)
    results: dict[str, Any] = {}
    for name in args.systems:
        atoms = build_system(name, molecule, args)
        engine_steps = max(1, round(args.engine_steps[name] * args.steps_scale))
        ase_steps = max(1, round(args.ase_steps[name] * args.steps_scale))
        log(f"{name}: {len(atoms)} atoms")
        entry: dict[str, Any] = {"n_atoms": len(atoms)}
        entry["engine"] = time_engine(model, atoms, engine_steps, args)
        entry["peak_rss_mb_after_engine"] = peak_rss_mb()
        if not args.no_ase:
            entry["ase"] = time_ase(model, atoms, ase_steps, args)
            entry["speedup_engine_over_ase"] = round(
                entry["ase"]["ms_per_step"] / entry["engine"]["ms_per_step"], 2)
            log(f"  engine is {entry['speedup_engine_over_ase']}× faster than ASE")
        entry["peak_rss_mb"] = peak_rss_mb()
        results[name] = entry
    summary: dict[str, Any] = {}
    if "1k" in results and "10k" in results:
        for path in ("engine", "ase"):
            if path in results["1k"] and path in results["10k"]:
                ratio = (results["10k"][path]["us_per_atom_step"]
                         / results["1k"][path]["us_per_atom_step"])
                summary[f"{path}_atom_step_cost_ratio_10k_vs_1k"] = round(ratio, 3)
        ratio = summary["engine_atom_step_cost_ratio_10k_vs_1k"]
        summary["engine_flat_within_1_5x"] = bool(1 / 1.5 <= ratio <= 1.5)
        log(f"engine cost per atom-step, 10k / 1k: {ratio:.3f} (target <= 1.5)")
    if not args.no_ase:
        summary["speedup_engine_over_ase"] = {
            k: v["speedup_engine_over_ase"] for k, v in results.items()}
    return {
        "model": model_dir or "fresh (reference hyperparameters, random weights)",
        "model_config": model.config.model_dump(),
        "dtype": args.dtype,
        "ensemble": {"kind": "langevin", "temperature_K": args.temperature,
                     "timestep_fs": args.timestep, "friction_per_fs": args.friction},
        "skin": args.skin,
        "stride": args.stride,
        "steps_scale": args.steps_scale,
        "systems": results,
        "summary": summary,
    }


# -- stability -------------------------------------------------------------------------------


def stability_run(job: dict[str, Any]) -> dict[str, Any]:
    """One NVT Langevin run from the first test configuration; module level for ``spawn``."""
    import ase.io

    import so3krates  # noqa: F401  (64-bit mode)
    from so3krates.md.engine import Simulation
    from so3krates.md.integrators import Ensemble
    from so3krates.md.system import System, model_energy_fn
    from so3krates.model_io import load_model

    temperature, seed, a = job["temperature"], job["seed"], job["args"]
    tag = f"T={temperature:g} K seed {seed}"
    t_start = time.perf_counter()
    atoms = ase.io.read(Path(a["data_dir"]) / TEST_FILE, index=0)
    model = load_model(a["model"], dtype=a["dtype"], radial_knots=a["radial_knots"])
    system = System.from_atoms(atoms)
    ensemble = Ensemble("langevin", timestep=a["timestep"], temperature=temperature,
                        friction=a["friction"])
    stride = a["stride"]
    n_steps = round_steps(a["time_ps"] * 1000 / a["timestep"], stride)
    sim = Simulation(model_energy_fn(model, system), system, atoms.positions, ensemble,
                     model.cutoff, skin=a["skin"], stride=stride,
                     chunk_frames=a["chunk_frames"], seed=seed)
    writer = None
    if a["traj_dir"]:
        from so3krates.md.run import write_frames
        from so3krates.md.trajectory import TrajectoryWriter

        path = Path(a["traj_dir"]) / f"aspirin_T{temperature:g}_seed{seed}.extxyz"
        writer = TrajectoryWriter(path, system.numbers, system.cell, system.pbc,
                                  masses=system.masses)
    acc = {"sum": 0.0, "n": 0, "next_log": a["log_every_ps"]}
    every = a["traj_every"]

    def on_frames(frames) -> None:
        acc["sum"] += float(np.sum(frames.temperature))
        acc["n"] += len(frames)
        if writer is not None:
            keep = (frames.step // stride) % every == 0
            if np.any(keep):
                write_frames(writer, type(frames)(*(x[keep] for x in frames)), a["timestep"])
        ps = frames.step[-1] * a["timestep"] / 1000
        if ps >= acc["next_log"]:
            acc["next_log"] += a["log_every_ps"]
            log(f"  [{tag}] {ps:g} ps, T = {frames.temperature[-1]:.0f} K, "
                f"{time.perf_counter() - t_start:.0f} s")

    log(f"stability run {tag}: {n_steps} steps ({n_steps * a['timestep'] / 1000:g} ps)")
    try:
        summary = sim.run(n_steps, on_frames=on_frames)
    finally:
        if writer is not None:
            writer.close()
    wall = time.perf_counter() - t_start
    result = {
        "temperature_K": temperature,
        "seed": seed,
        "stable": bool(summary.stable),
        "time_to_instability_fs": summary.time_to_instability_fs,
        "simulated_ps": round(summary.steps * a["timestep"] / 1000, 4),
        "steps": summary.steps,
        "wall_seconds": round(wall, 2),
        "ms_per_step_incl_compile": round(summary.ms_per_step, 4),
        "mean_temperature_K": round(acc["sum"] / acc["n"], 2) if acc["n"] else None,
        "reallocations": summary.reallocations,
        "peak_rss_mb": peak_rss_mb(),  # of the process running it (cumulative when serial)
    }
    log(f"stability run {tag}: {'stable' if result['stable'] else 'UNSTABLE at ' + str(result['time_to_instability_fs']) + ' fs'}, "
        f"{result['simulated_ps']} ps in {result['wall_seconds']} s, "
        f"mean T {result['mean_temperature_K']} K")
    return result


def _single_thread_worker() -> None:
    """Pool initializer: single-threaded XLA (before the worker's first JAX computation)."""
    from so3krates.compile import use_one_cpu_thread

    use_one_cpu_thread()


def run_stability(args: argparse.Namespace) -> dict[str, Any]:
    """The runs (temperatures × seeds), serially or in ``--parallel`` processes."""
    shared = {
        "data_dir": str(args.data_dir), "model": str(args.model), "dtype": args.dtype,
        "radial_knots": args.radial_knots, "timestep": args.timestep, "friction": args.friction, "skin": args.skin,
        "stride": args.stride, "chunk_frames": args.chunk_frames, "time_ps": args.time_ps,
        "traj_dir": str(args.traj_dir) if args.traj_dir else None, "traj_every": args.traj_every,
        "log_every_ps": args.log_every_ps,
    }
    jobs = [{"temperature": t, "seed": s, "args": shared} for t in args.temperatures for s in args.seeds]
    if args.parallel > 1:
        import multiprocessing as mp

        log(f"{len(jobs)} runs in {args.parallel} single-threaded processes")
        with mp.get_context("spawn").Pool(args.parallel, initializer=_single_thread_worker) as pool:
            runs = pool.map(stability_run, jobs, chunksize=1)
    else:
        runs = [stability_run(job) for job in jobs]
    by_t = {}
    for t in args.temperatures:
        sub = [r for r in runs if r["temperature_K"] == t]
        by_t[f"{t:g}"] = {"stable": sum(r["stable"] for r in sub), "runs": len(sub)}
    return {
        "model": str(args.model),
        "dtype": args.dtype,
        "timestep_fs": args.timestep,
        "friction_per_fs": args.friction,
        "time_ps": args.time_ps,
        "parallel": args.parallel,
        "runs": runs,
        "summary": {
            "all_stable": all(r["stable"] for r in runs),
            "n_stable": sum(r["stable"] for r in runs),
            "n_runs": len(runs),
            "by_temperature": by_t,
            "total_simulated_ps": round(sum(r["simulated_ps"] for r in runs), 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the JSON result on stdout."""
    args = parse_args(argv)
    t0 = time.monotonic()
    if args.stability:
        result = run_stability(args)
        mode = "stability"
    else:
        import ase.io

        import so3krates  # noqa: F401  (enables float64 in JAX)

        if args.cpu is not None:
            from so3krates.compile import use_one_cpu_thread

            use_one_cpu_thread(core=args.cpu)

        molecule = ase.io.read(args.data_dir / TEST_FILE, index=0)
        result = run_speed(args, molecule)
        mode = "speed"
    report = {
        "machine": _aspirin.machine_info(),
        "mode": mode,
        "cpu_core": None if args.stability else args.cpu,
        **result,
        "peak_rss_mb": peak_rss_mb(),
        "wall_time_s": round(time.monotonic() - t0, 1),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
