"""Large systems: energy + forces and MD steps from 10^3 to 10^5 atoms, time and peak memory.

Systems are grids of rMD17 aspirin molecules (21 atoms each, 4 Å between their bounding
boxes, an open cluster as in ``md.py``), the model the reference one of ``aspirin.py`` with
fresh parameters (timing does not depend on training), float32. Each measurement runs in a
fresh process so that its peak resident memory is its own:

- ``energy_forces``: the ASE calculator (device neighbour list, cell lists where they pay),
  median of ``--calls`` calls after a warm-up call, positions jittered between calls;
- ``md``: the MD engine, Langevin at 300 K, a warm-up chunk then ``--md-steps`` timed steps;
- ``neighbours``: one device neighbour-list build, cell lists against the all-pairs search.

Run from the repository root::

    .venv/bin/python benchmarks/large_systems.py
    .venv/bin/python benchmarks/large_systems.py --sizes 1000 10000 --modes energy_forces

Writes ``benchmarks/results/large_systems_<machine>_<date>.json`` with the log-log slope of
energy + forces time against the number of atoms.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aspirin as _aspirin  # noqa: E402
import md as _md  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[large-systems] {message}", file=sys.stderr, flush=True)


def system_of(n_atoms: int):
    """The grid of aspirin molecules with about ``n_atoms`` atoms, and the molecule."""
    import ase.io

    molecule = ase.io.read(_aspirin.DEFAULT_DATA_DIR / _aspirin.TEST_FILE, index=0)
    n_mol = max(1, round(n_atoms / len(molecule)))
    return _aspirin.molecule_grid(molecule, _md.grid_shape(n_mol), _aspirin.GRID_GAP), molecule


def fresh_model(molecule, seed: int = 0):
    config = _md.reference_model_config("float32")
    return _aspirin.fresh_model(config, molecule, Path("fresh"), seed)


def measure(mode: str, n_atoms: int, calls: int, md_steps: int) -> dict:
    """One measurement in this process (see the module docstring)."""
    import jax
    import jax.numpy as jnp

    atoms, molecule = system_of(n_atoms)
    model = fresh_model(molecule)
    out: dict = {"mode": mode, "atoms": len(atoms)}
    if mode == "energy_forces":
        calc = model.calculator()
        atoms.calc = calc
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        atoms.get_forces()
        out["first_call_s"] = time.perf_counter() - t0
        times = []
        for _ in range(calls):
            atoms.positions += rng.normal(0, 1e-4, atoms.positions.shape)
            t0 = time.perf_counter()
            atoms.get_potential_energy(), atoms.get_forces()
            times.append(time.perf_counter() - t0)
        out["ms"] = 1e3 * float(np.median(times))
        out["cell_lists"] = calc._molecule.spec.bins is not None  # the device list's search
    elif mode == "md":
        args = argparse.Namespace(monitor="off", model=None, stride=5, chunk_frames=2,
                                  timestep=0.5, temperature=300.0, friction=0.01, skin=1.0,
                                  seed=0, no_memory_analysis=True)
        r = _md.time_engine(model, atoms, md_steps, args)
        out.update({k: r[k] for k in ("ms_per_step", "atom_steps_per_s", "us_per_atom_step",
                                      "warmup_seconds", "reallocations", "steps")})
    elif mode == "neighbours":
        from so3krates.md.system import System
        from so3krates.neighbours import verlet as nl

        system = System.from_atoms(atoms)
        pos, cell = jnp.asarray(atoms.positions), jnp.asarray(system.cell)
        for search in ("cells", "all_pairs"):
            if search == "all_pairs" and len(atoms) > 30_000:
                continue  # O(N^2): minutes per build
            spec = nl.allocate(atoms.positions, system.cell, system.pbc, model.cutoff, 1.0,
                               search=search)
            build = jax.jit(nl.build, static_argnums=2)
            jax.block_until_ready(build(pos, cell, spec))
            t0 = time.perf_counter()
            for _ in range(3):
                jax.block_until_ready(build(pos, cell, spec))
            out[f"{search}_build_ms"] = 1e3 * (time.perf_counter() - t0) / 3
    out["peak_rss_mb"] = _md.peak_rss_mb()
    out["rss_kb_per_atom"] = round(1024 * out["peak_rss_mb"] / len(atoms), 2)
    return out


def slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(time) against log(atoms)."""
    if len(points) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--modes", nargs="+", default=["energy_forces", "neighbours", "md"],
                   choices=["energy_forces", "neighbours", "md"])
    p.add_argument("--md-sizes", type=int, nargs="+", default=[10000, 100000])
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--md-steps", type=int, default=10)
    p.add_argument("--worker", nargs=2, metavar=("MODE", "ATOMS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        mode, n = args.worker[0], int(args.worker[1])
        print(json.dumps(measure(mode, n, args.calls, args.md_steps)))
        return 0
    results = []
    for mode in args.modes:
        for n in (args.md_sizes if mode == "md" else args.sizes):
            log(f"{mode}, {n} atoms")
            proc = subprocess.run([sys.executable, __file__, "--worker", mode, str(n),
                                   "--calls", str(args.calls), "--md-steps", str(args.md_steps)],
                                  capture_output=True, text=True)
            if proc.returncode:
                log(f"  failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
                results.append({"mode": mode, "atoms_requested": n, "error": proc.stderr[-2000:]})
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            log(f"  {r}")
            results.append(r)
    ef = [(r["atoms"], r["ms"]) for r in results if r.get("mode") == "energy_forces" and "ms" in r]
    result = {
        "benchmark": "large_systems", "date": datetime.date.today().isoformat(),
        "machine": _aspirin.machine_info(), "results": results,
        "energy_forces_loglog_slope": slope(ef),
        "model": "aspirin.py reference settings, fresh parameters, float32",
        "max_rss_note": "peak resident memory of the measuring process (ru_maxrss)",
    }
    out = ROOT / "benchmarks" / "results" / f"large_systems_{os.uname().nodename}_{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"energy_forces_slope": result["energy_forces_loglog_slope"],
                      "results": results}, indent=2))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
