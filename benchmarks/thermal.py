"""Heat flux, NPT and Green–Kubo benchmarks.

1. Green–Kubo κ of Lennard-Jones argon (the correctness anchor): the zero-pressure volume at
   the temperature from an isotropic NPT run, then independent NVE runs with the heat flux.
2. Cost of the derivatives of one energy function for diamond-Si supercells (~1k and ~10k
   atoms; a model of the reference size, random or trained): energy + forces, + stress,
   + heat flux (unfolded system, forward + reverse mode), each per call; and an MD step in
   NPT against NVT (Nosé–Hoover), ms per step.
3. Optionally (``--si-model DIR --si-kappa``) Green–Kubo κ of diamond Si with a trained model.

Writes ``benchmarks/results/thermal_<tag>.json``. Example::

    .venv/bin/python benchmarks/thermal.py --tag epyc_2026-12-07
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from ase import units
from ase.build import bulk

import so3krates
from so3krates.batching import single_graph
from so3krates.heat_flux import HeatFlux
from so3krates.md import Ensemble, Simulation, System
from so3krates.md.system import graph, model_energy_fn
from so3krates.md.thermal import thermal_conductivity
from so3krates.terms import LennardJones

RESULTS = Path(__file__).resolve().parent / "results"
# Lennard-Jones argon as in the Green–Kubo literature (σ 3.4 Å, ε 0.0104 eV, cutoff 2.5σ).
LJ = LennardJones(sigma=3.405, epsilon=0.0104, rc=8.5, ro=7.5)


def median_ms(fn, repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def lj_energy_fn(system: System):
    n = system.n_atoms

    def energy_fn(positions, cell, nbrs):
        return LJ.atomic_energy_fn(None, graph(positions, cell, system, nbrs))[:n]

    return energy_fn


def argon_kappa(temperature: float, n_cells: int, runs: int, production_ps: float,
                sample_every: int, max_lag_ps: float, lattice: float | None = None) -> dict:
    """Green–Kubo κ of LJ argon; ``lattice`` (Å) skips the NPT run that finds it."""
    a = 5.30 if lattice is None else lattice
    atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat((n_cells,) * 3)
    system = System.from_atoms(atoms)
    scale = 1.0
    if lattice is None:
        npt = Simulation(lj_energy_fn(system), system, atoms.positions,
                         Ensemble("npt", 4.0, temperature, tau=400.0, pressure=0.0,
                                  barostat_tau=2000.0, isotropic=True),
                         LJ.rc, skin=0.5, stride=25, chunk_frames=40, monitor=None)
        volumes = []
        npt.run(5000)
        npt.run(15000, lambda f: volumes.append(f.volume))
        volume = float(np.mean(np.concatenate(volumes)))
        scale = (volume / atoms.get_volume()) ** (1 / 3)
    atoms.set_cell(atoms.cell[:] * scale, scale_atoms=True)
    system = System.from_atoms(atoms)
    flux = HeatFlux(LJ.atomic_energy_fn, None, atoms.numbers, system.masses, atoms.pbc,
                    reach=LJ.rc, cutoff=LJ.rc)
    run_temperatures = []

    def on_run(r, x):
        run_temperatures.append(x["mean_temperature_K"])
        print(f"  argon run {r}: {np.trace(x['kappa']) / 3:.3f} W/m/K at "
              f"{x['mean_temperature_K']:.2f} K ({time.perf_counter() - t0:.0f} s)", flush=True)

    t0 = time.perf_counter()
    res = thermal_conductivity(lj_energy_fn(system), flux, system, atoms.positions, LJ.rc,
                               temperature=temperature, runs=runs, equilibration_fs=20_000.0,
                               production_fs=1e3 * production_ps, timestep=4.0,
                               sample_every=sample_every, max_lag_fs=1e3 * max_lag_ps,
                               on_run=on_run)
    return {
        "temperature_K": temperature, "n_atoms": len(atoms),
        "lattice_constant_A": float(atoms.cell[0, 0] / n_cells), "runs": runs,
        "production_ps_per_run": production_ps,
        "sample_fs": 4.0 * sample_every, "max_lag_ps": max_lag_ps,
        "kappa_mean_W_mK": res["kappa_mean_W_mK"], "kappa_mean_W_mK_stderr": res["kappa_mean_W_mK_stderr"],
        "kappa_per_run_W_mK": res["kappa_mean_per_run_W_mK"],
        "running_integral_trace_W_mK": {
            f"{t:g}ps": float(np.trace(res["running_integral_W_mK"][i]) / 3)
            for t in (0.5, 1, 2, 5, 10, 20, 40)
            if (i := int(round(1e3 * t / res["sample_fs"]))) < len(res["lags_fs"])},
        "kappa_tensor_W_mK": np.asarray(res["kappa_W_mK"]).tolist(),
        "mean_temperature_K": res["mean_temperature_K"],
        "temperature_per_run_K": run_temperatures,
        "ns_per_day_with_heat_flux": res["ns_per_day_with_heat_flux"],
        "wall_s": time.perf_counter() - t0,
        "reference": "McGaughey & Kaviany, Int. J. Heat Mass Transfer 47, 1783 (2004) and Phys. "
                     "Rev. B 69, 094303 (2004), Green-Kubo for LJ argon (2.5 sigma cutoff, 256 "
                     "atoms): of order 0.4-0.5 W/m/K at 50 K as remembered; the value could not "
                     "be checked against the papers here",
    }


def silicon_model(model_dir: str | None):
    """A trained model, or a randomly initialised one of the reference size (2 blocks, F=128)
    with Si as its only element (costs do not depend on the parameters' values)."""
    if model_dir:
        return so3krates.load_model(model_dir)
    from so3krates.config import ModelConfig
    from so3krates.model_io import Model, build_module, init_params

    cfg = ModelConfig(num_layers=2)
    probe = bulk("Si", "diamond", a=5.43)
    g, _ = single_graph(probe.numbers, probe.positions, probe.cell[:], probe.pbc, cfg.cutoff)
    params = init_params(build_module(cfg, 1.0), g, 0)
    return Model(Path("."), cfg, params, {14: -5.0}, 1.0, "float32")


def costs(model, repeats: int, sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((n, n, n))
        atoms.rattle(0.02, seed=0)
        g, _ = single_graph(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc, model.cutoff,
                            dtype=np.dtype(model.dtype), pair_halves=True)
        row = {"n_atoms": len(atoms)}
        row["forces_ms"] = median_ms(lambda: model.predict(g, pair_halves=True), repeats)
        row["stress_ms"] = median_ms(lambda: model.predict(g, pair_halves=True, stress=True), repeats)
        system = System.from_atoms(atoms)
        flux = model.heat_flux(atoms)
        v = np.random.default_rng(0).normal(scale=0.005, size=(len(atoms), 3))
        row["heat_flux_ms"] = median_ms(lambda: flux(atoms.positions, v, atoms.cell[:])[0],
                                        max(3, repeats // 3))
        row["stress_over_forces"] = row["stress_ms"] / row["forces_ms"]
        row["heat_flux_over_forces"] = row["heat_flux_ms"] / row["forces_ms"]
        for kind in ("nose-hoover", "npt"):
            sim = Simulation(model_energy_fn(model, system), system, atoms.positions,
                             Ensemble(kind, 1.0, 300.0, pressure=0.0), model.cutoff, skin=1.0,
                             stride=10, chunk_frames=2, monitor=None)
            sim.run(20)  # compile
            summary = sim.run(20 * max(1, repeats // 5))
            row[f"{kind}_ms_per_step"] = summary.ms_per_step
        row["npt_over_nvt"] = row["npt_ms_per_step"] / row["nose-hoover_ms_per_step"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tag", default=time.strftime("%Y-%m-%d"))
    p.add_argument("--argon-temperature", type=float, default=50.0)
    p.add_argument("--argon-cells", type=int, default=4, help="n x n x n conventional cells")
    p.add_argument("--argon-runs", type=int, default=3)
    p.add_argument("--argon-production", type=float, default=100.0, help="ps per run")
    p.add_argument("--argon-sample-every", type=int, default=10, help="steps of 4 fs")
    p.add_argument("--argon-max-lag", type=float, default=10.0,
                   help="ps (the LJ argon integral is flat from about 5 ps at 50 K)")
    p.add_argument("--argon-lattice", type=float,
                   help="Å: skip the NPT run (zero pressure at 50 K: 5.395, benchmarks/results/"
                        "thermal_epyc_2026-12-07.json, and an ASE virial check)")
    p.add_argument("--skip-costs", action="store_true", help="argon only")
    p.add_argument("--sizes", default="3,6", help="diamond Si n x n x n conventional cells "
                   "(8 n^3 atoms; 3 -> 216, 5 -> 1,000, 11 -> 10,648)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--si-model", help="a trained Si model directory (costs and Si kappa)")
    p.add_argument("--si-kappa", action="store_true",
                   help="with --si-model: also Green-Kubo kappa of diamond Si (hours on a CPU)")
    p.add_argument("--si-production", type=float, default=50.0, help="ps per run")
    p.add_argument("--skip-argon", action="store_true")
    args = p.parse_args()
    out = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                       "cpus": len(__import__("os").sched_getaffinity(0)),
                       "jax": jax.__version__, "backend": jax.default_backend()},
           "command": " ".join(__import__("sys").argv)}
    if not args.skip_argon:
        out["argon"] = argon_kappa(args.argon_temperature, args.argon_cells, args.argon_runs,
                                   args.argon_production, args.argon_sample_every,
                                   args.argon_max_lag, args.argon_lattice)
        print(json.dumps(out["argon"], indent=1), flush=True)
    if args.skip_costs:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"thermal_{args.tag}.json"
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path}")
        return
    model = silicon_model(args.si_model)
    out["costs_model"] = args.si_model or "random, reference size (2 blocks, F=128, 5 Å), float32"
    out["costs"] = costs(model, args.repeats, [int(s) for s in args.sizes.split(",")])
    if args.si_model and args.si_kappa:
        atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((3, 3, 3))
        system = System.from_atoms(atoms)
        flux = model.heat_flux(atoms)
        res = thermal_conductivity(model_energy_fn(model, system), flux, system, atoms.positions,
                                   model.cutoff, temperature=300.0, runs=3,
                                   equilibration_fs=10_000.0, production_fs=1e3 * args.si_production,
                                   timestep=1.0, sample_every=4, max_lag_fs=10_000.0)
        out["silicon"] = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
                          for k, v in res.items() if not k.startswith("running_integral")}
        out["silicon"]["experiment_W_mK"] = "about 150 at 300 K"
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"thermal_{args.tag}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
