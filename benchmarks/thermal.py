"""Heat flux, NPT and Green–Kubo benchmarks.

1. Green–Kubo κ of Lennard-Jones argon (the correctness anchor): the zero-pressure volume at
   the temperature from an isotropic NPT run, then independent NVE runs with the heat flux.
2. Cost of the derivatives of one energy function for diamond-Si supercells (~1k and ~10k
   atoms; a model of the reference size, random or trained): energy + forces, + stress,
   + heat flux (unfolded system, forward + reverse mode), each per call; and an MD step in
   NPT against NVT (Nosé–Hoover), ms per step.
3. Optionally (``--si-model DIR --si-kappa``) Green–Kubo κ of diamond Si with a trained model.
4. ``--argon-phase liquid`` (instead of 1–3): Green–Kubo κ of the LJ liquid near the triple point
   (T* = 0.722, ρ* = 0.8442), where the flux correlation decays within about 2 ps and the
   literature has a reference value (λ* ≈ 6.9–7.0 for a 2.5 σ cutoff).

Writes ``benchmarks/results/thermal_<tag>.json`` (liquid: ``thermal_argon_liquid_<tag>.json``).
Examples::

    .venv/bin/python benchmarks/thermal.py --tag epyc_2026-12-07
    .venv/bin/python benchmarks/thermal.py --argon-phase liquid --tag epyc_2026-12-07
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np
from ase import units
from ase.build import bulk

import so3krates
from so3krates.batching import single_graph
from so3krates.heat_flux import HeatFlux
from so3krates.md import Ensemble, Simulation, System
from so3krates.md.system import graph, model_energy_fn
from so3krates.md.thermal import green_kubo, plateau, thermal_conductivity
from so3krates.terms import LennardJones

RESULTS = Path(__file__).resolve().parent / "results"
# Lennard-Jones argon as in the Green–Kubo literature (σ 3.4 Å, ε 0.0104 eV, cutoff 2.5σ).
LJ = LennardJones(sigma=3.405, epsilon=0.0104, rc=8.5, ro=7.5)
ARGON_MASS = 39.948  # u (ASE's, as System.from_atoms uses)
# Reduced units of *this* potential (ε = LJ.epsilon = 0.0104 eV, ε/k_B = 120.69 K):
# T* = k_B T / ε; ρ* = ρ σ³; λ* = λ σ² sqrt(m/ε) / k_B, λ in W/(m K) = λ* × LJ_KAPPA_UNIT.
LJ_TEMPERATURE_UNIT = LJ.epsilon / units.kB  # K
LJ_KAPPA_UNIT = 1.380649e-23 / ((LJ.sigma * 1e-10) ** 2 * np.sqrt(
    ARGON_MASS * 1.66053906660e-27 / (LJ.epsilon * 1.602176634e-19)))  # 0.018873 W/(m K)
LJ_TIME_UNIT_PS = LJ.sigma * 1e-10 * np.sqrt(
    ARGON_MASS * 1.66053906660e-27 / (LJ.epsilon * 1.602176634e-19)) * 1e12  # τ = 2.148 ps


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


LIQUID_REFERENCES = [
    {"lambda_star": 6.946, "stderr": 0.12, "method": "EMD NVE, Helfand-moment method "
     "(Einstein relation of the heat flux's time integral), 600000 tau* of trajectory",
     "state": "T* = 0.722, rho* = 0.8442, N = 1372, LJ cut at 2.5 sigma",
     "paper": "S. Viscardy, J. Servantie and P. Gaspard, 'Transport and Helfand moments in the "
              "Lennard-Jones fluid. II. Thermal conductivity', J. Chem. Phys. 126, 184513 (2007), "
              "arXiv:cond-mat/0701254",
     "where_read": "not read in the paper itself (its arXiv page was found, the excerpt shows only "
                   "the abstract); quoted, with the state point, N and cutoff, in the table "
                   "'Comparison to Literature Results' of the STACIE documentation example "
                   "docs/source/examples/lj_thermal_conductivity.py (github.com/molmod/stacie, "
                   "page molmod.github.io/stacie/examples/lj_thermal_conductivity.html)"},
    {"lambda_star": 6.936, "stderr": 0.029, "method": "EMD NVE Green-Kubo, LAMMPS compute "
     "heat/flux, spectrum fit (STACIE), 30000 tau* (earlier, shorter: 6.836 +- 0.082 at 3600 "
     "tau*, 7.029 +- 0.057 at 10800 tau*)",
     "state": "T* = 0.722, rho* = 0.8442, N = 1372, LAMMPS lj/cut 2.5 (truncated, not shifted, "
              "no switch)",
     "paper": "G. Toraman, D. Fauconnier and T. Verstraelen, J. Chem. Inf. Model. 65, 10445 "
              "(2025) (STACIE), documentation example",
     "where_read": "same STACIE example file and table; LAMMPS input "
                   "docs/data/lammps_lj3d/exploration/in.lammps of the same repository "
                   "(pair_style lj/cut 2.5, 7x7x7 fcc = 1372 atoms)"},
]


def liquid_kappa_remarks(lambda_star: float, stderr: float) -> dict:
    ref = LIQUID_REFERENCES[0]
    z = (lambda_star - ref["lambda_star"]) / np.hypot(stderr, ref["stderr"])
    return {"difference_to_viscardy_2007": lambda_star - ref["lambda_star"],
            "difference_in_combined_stderr": float(z)}


class TimedFlux:
    """A :class:`HeatFlux` that counts its calls and their time (the cost of the flux in the
    production runs)."""

    def __init__(self, flux: HeatFlux):
        self.flux, self.calls, self.seconds = flux, 0, 0.0

    def __call__(self, positions, velocities, cell):
        t0 = time.perf_counter()
        out = self.flux(positions, velocities, cell)
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return out


def prepare_liquid(n_cells: int, timestep: float = 4.0, density_reduced: float = 0.8442,
                   temperature_reduced: float = 0.722, melt_ps: float = 10.0,
                   melt_temperature: float = 300.0, cool_ps: float = 20.0,
                   nve_check_ps: float = 10.0, seed: int = 0):
    """An equilibrated LJ liquid: ``n_cells``³ fcc conventional cells (4 n³ atoms) scaled to
    ``density_reduced``, melted by Langevin MD at ``melt_temperature`` K, cooled by Langevin
    MD at the target temperature (``temperature_reduced`` × ε/k_B, ε of ``LJ``), then a short
    NVE run from it (energy conservation of the timestep; the mean-square displacement without
    the thermostat's friction, i.e. the self-diffusion, shows it is a liquid).

    Returns ``(atoms, system, energy_fn, positions, velocities, info)``: the cooled state
    (the NVE check starts from it and leaves it as it is) and a dict of the checks."""
    t_start = time.perf_counter()
    temperature = temperature_reduced * LJ_TEMPERATURE_UNIT
    rho = density_reduced / LJ.sigma**3  # atoms / Å³
    n_atoms = 4 * n_cells**3
    a = (4.0 / rho) ** (1 / 3)
    atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat((n_cells,) * 3)
    assert len(atoms) == n_atoms
    system = System.from_atoms(atoms)
    energy_fn = lj_energy_fn(system)
    steps = lambda ps, stride: int(round(1e3 * ps / timestep / stride)) * stride  # noqa: E731

    def msd_of(x0, x1):  # Å², the centre of mass's drift taken out
        d = x1 - x0
        d = d - d.mean(axis=0)
        return float(np.mean(np.sum(d**2, axis=1)))

    # Melt (hot Langevin), then cool to the target temperature.
    melt = Simulation(energy_fn, system, atoms.positions,
                      Ensemble("langevin", timestep, melt_temperature, friction=0.01),
                      LJ.rc, skin=1.0, stride=25, chunk_frames=20, monitor=None, seed=seed + 1000)
    melt_temps = []
    melt.run(steps(melt_ps, 25), lambda f: melt_temps.append(f.temperature))
    hot = melt.state_arrays()
    cool = Simulation(energy_fn, system, hot["positions"],
                      Ensemble("langevin", timestep, temperature, friction=0.01),
                      LJ.rc, skin=1.0, stride=25, chunk_frames=20, monitor=None, seed=seed + 2000,
                      velocities=hot["velocities"], spec=melt.spec)
    half = steps(cool_ps / 2, 25)
    cool.run(half)
    x_mid = cool.state_arrays()["positions"]
    cool_temps, cool_energies = [], []
    cool.run(half, lambda f: (cool_temps.append(f.temperature),
                              cool_energies.append(f.potential_energy)))
    cooled = cool.state_arrays()
    x_end = cooled["positions"]
    msd_langevin = msd_of(x_mid, x_end)
    # Energy conservation of the timestep and self-diffusion: a short NVE run from the cooled
    # state, in two halves (the slope of the MSD over the second half gives D).
    nve = Simulation(energy_fn, system, x_end, Ensemble("nve", timestep, temperature), LJ.rc,
                     skin=1.0, stride=25, chunk_frames=20, monitor=None,
                     velocities=cooled["velocities"], spec=cool.spec)
    conserved, nve_temps = [], []
    record = lambda f: (conserved.append(f.conserved_energy),  # noqa: E731
                        nve_temps.append(f.temperature))
    nve_half = steps(nve_check_ps / 2, 25)
    nve.run(nve_half, record)
    msd_half = msd_of(x_end, nve.state_arrays()["positions"])
    nve.run(nve_half, record)
    msd_full = msd_of(x_end, nve.state_arrays()["positions"])
    half_ps = nve_half * timestep / 1e3
    diffusion = (msd_full - msd_half) / (6 * half_ps)  # Å²/ps
    diffusion_reduced = diffusion * LJ_TIME_UNIT_PS / LJ.sigma**2
    conserved = np.concatenate(conserved) / n_atoms
    drift = np.polyfit(np.arange(len(conserved)) * 25 * timestep / 1e3, conserved, 1)[0]
    prep_s = time.perf_counter() - t_start
    liquid = msd_full > 1.0 and diffusion_reduced > 0.005
    print(f"  NVE check {nve_check_ps:g} ps: conserved energy drift {1e6 * drift:.2f} µeV/atom/ps, "
          f"std {1e6 * conserved.std():.2f} µeV/atom; MSD {msd_full:.2f} Å², "
          f"D = {diffusion:.3f} Å²/ps = {diffusion_reduced:.4f} σ²/τ", flush=True)
    print(f"  liquid: {n_atoms} atoms, L = {atoms.cell[0, 0]:.3f} Å, melted "
          f"{np.mean(np.concatenate(melt_temps)):.0f} K, cooled to "
          f"{np.mean(np.concatenate(cool_temps)):.1f} K, MSD over {cool_ps / 2:g} ps (Langevin) "
          f"{msd_langevin:.2f} Å² ({prep_s:.0f} s)", flush=True)
    info = {"melt_ps": melt_ps, "melt_temperature_K": melt_temperature,
            "melt_mean_temperature_K": float(np.mean(np.concatenate(melt_temps))),
            "cool_ps": cool_ps, "friction_per_fs": 0.01,
            "cool_mean_temperature_K_second_half": float(np.mean(np.concatenate(cool_temps))),
            "cool_mean_potential_energy_eV_per_atom": float(
                np.mean(np.concatenate(cool_energies)) / n_atoms),
            "msd_A2_langevin_second_half_of_cooling": msd_langevin,
            "nve_check_ps": nve_check_ps,
            "nve_check_mean_temperature_K": float(np.mean(np.concatenate(nve_temps))),
            "nve_conserved_energy_drift_ueV_per_atom_per_ps": 1e6 * float(drift),
            "nve_conserved_energy_std_ueV_per_atom": 1e6 * float(conserved.std()),
            "nve_msd_A2": msd_full, "nve_msd_A2_first_half": msd_half,
            "self_diffusion_A2_per_ps": diffusion, "self_diffusion_reduced": diffusion_reduced,
            "liquid_check": ("diffusing liquid" if liquid else "NOT clearly a liquid")
                            + f": NVE MSD {msd_full:.2f} A^2 in {nve_check_ps:g} ps, D* = "
                            f"{diffusion_reduced:.4f} (the LJ liquid near the triple point: D* of "
                            "order 0.03; a crystal: MSD of a few 0.1 A^2 and D* = 0). The "
                            "Langevin MSD is smaller: the friction of 0.01/fs (10/ps) is as "
                            "large as the liquid's own (k_B T / (m D) ~ 10/ps)",
            "wall_s": prep_s}
    return atoms, system, energy_fn, x_end, cooled["velocities"], info


def argon_liquid_kappa(n_cells: int, runs: int, production_ps: float, sample_every: int,
                       max_lag_ps: float, timestep: float = 4.0, density_reduced: float = 0.8442,
                       temperature_reduced: float = 0.722, melt_ps: float = 10.0,
                       melt_temperature: float = 300.0, cool_ps: float = 20.0,
                       equilibration_ps: float = 10.0, nve_check_ps: float = 10.0,
                       seed: int = 0) -> dict:
    """Green–Kubo κ of the Lennard-Jones liquid (``LJ``) at a reduced state point: the liquid
    of :func:`prepare_liquid`, then :func:`thermal_conductivity` (``runs`` independent Langevin
    equilibrations + NVE productions from that structure)."""
    t_start = time.perf_counter()
    temperature = temperature_reduced * LJ_TEMPERATURE_UNIT
    rho = density_reduced / LJ.sigma**3
    atoms, system, energy_fn, x_end, _, prep = prepare_liquid(
        n_cells, timestep, density_reduced, temperature_reduced, melt_ps, melt_temperature,
        cool_ps, nve_check_ps, seed)
    n_atoms = len(atoms)

    flux = TimedFlux(HeatFlux(LJ.atomic_energy_fn, None, atoms.numbers, system.masses,
                                atoms.pbc, reach=LJ.rc, cutoff=LJ.rc))
    run_temperatures, coarse = [], []
    volume = abs(float(np.linalg.det(system.cell)))

    def on_run(r, x):
        run_temperatures.append(x["mean_temperature_K"])
        k = np.trace(x["kappa"]) / 3
        # The same run's flux at half the sampling rate: the sampling interval's effect.
        _, kc = green_kubo(x["flux"][::2], 2 * timestep * sample_every, volume,
                           x["mean_temperature_K"], 1e3 * max_lag_ps)
        coarse.append(float(np.trace(plateau(kc)) / 3))
        print(f"  liquid run {r}: {k:.4f} W/m/K = {k / LJ_KAPPA_UNIT:.3f} λ* at "
              f"{x['mean_temperature_K']:.2f} K ({time.perf_counter() - t0:.0f} s; flux "
              f"{flux.calls} calls, {1e3 * flux.seconds / max(flux.calls, 1):.0f} ms each, "
              f"{flux.flux.compiled_variants()} compiled)", flush=True)

    t0 = time.perf_counter()
    res = thermal_conductivity(energy_fn, flux, system, x_end, LJ.rc, temperature=temperature,
                               runs=runs, equilibration_fs=1e3 * equilibration_ps,
                               production_fs=1e3 * production_ps, timestep=timestep,
                               sample_every=sample_every, max_lag_fs=1e3 * max_lag_ps,
                               seed=seed, on_run=on_run)
    kappa_runs = np.asarray(res["kappa_mean_per_run_W_mK"])
    lam = res["kappa_mean_W_mK"] / LJ_KAPPA_UNIT
    lam_err = res["kappa_mean_W_mK_stderr"] / LJ_KAPPA_UNIT
    lags = res["lags_fs"]
    running = np.trace(res["running_integral_W_mK"], axis1=1, axis2=2) / 3
    per_run_running = np.trace(res["running_integral_per_run_W_mK"], axis1=2, axis2=3) / 3
    # Sensitivity to the correlation window: the plateau of the same runs' running integrals
    # over [w/2, w] for shorter windows w.
    windows = {}
    for w in (2.0, 3.0, max_lag_ps):
        n = int(round(1e3 * w / res["sample_fs"])) + 1
        if n <= len(lags):
            k = np.array([np.trace(plateau(ri[:n])) / 3
                          for ri in res["running_integral_per_run_W_mK"]]) / LJ_KAPPA_UNIT
            windows[f"{w:g}ps"] = {"lambda_star": float(k.mean()),
                                   "stderr": float(k.std(ddof=1) / np.sqrt(len(k)))
                                   if len(k) > 1 else None}
    coarse_l = np.asarray(coarse) / LJ_KAPPA_UNIT
    times = [t for t in (0.1, 0.25, 0.5, 1, 1.5, 2, 3, 4, 5, 7.5, 10)
             if int(round(1e3 * t / res["sample_fs"])) < len(lags)]
    at = lambda t: int(round(1e3 * t / res["sample_fs"]))  # noqa: E731
    return {
        "system": {
            "potential": f"so3krates.terms.LennardJones(sigma={LJ.sigma}, epsilon={LJ.epsilon}, "
                         f"rc={LJ.rc}, ro={LJ.ro}): 12-6 LJ times ASE's C1 switch in r^2 from "
                         f"ro = {LJ.ro / LJ.sigma:.3f} sigma to rc = {LJ.rc / LJ.sigma:.3f} sigma "
                         "(no shift, no tail correction)",
            "n_atoms": n_atoms, "box_A": float(atoms.cell[0, 0]),
            "density_reduced": density_reduced, "density_per_A3": rho,
            "mass_u": ARGON_MASS,
            "reduced_units": {
                "epsilon_eV": LJ.epsilon, "epsilon_over_kB_K": LJ_TEMPERATURE_UNIT,
                "sigma_A": LJ.sigma, "tau_ps": LJ_TIME_UNIT_PS,
                "kappa_unit_W_mK": LJ_KAPPA_UNIT,
                "note": "all reduced values use epsilon = 0.0104 eV of the simulated potential "
                        "(with the argon fit epsilon/kB = 119.8 K the unit would be 0.018803 "
                        "W/m/K and the target temperature 86.49 K)"},
        },
        "preparation": prep,
        "green_kubo": {
            "temperature_target_K": temperature, "temperature_target_reduced": temperature_reduced,
            "runs": runs, "equilibration_ps_per_run": equilibration_ps,
            "production_ps_per_run": res["production_fs_per_run"] / 1e3,
            "timestep_fs": timestep, "sample_fs": res["sample_fs"],
            "max_lag_ps": res["max_lag_fs"] / 1e3,
            "estimator": "per run: running integral averaged over [max_lag/2, max_lag], with the "
                         "run's mean kinetic temperature; mean over runs, stderr = spread/sqrt(runs)",
        },
        "kappa_mean_W_mK": res["kappa_mean_W_mK"],
        "kappa_mean_W_mK_stderr": res["kappa_mean_W_mK_stderr"],
        "lambda_star": lam, "lambda_star_stderr": lam_err,
        "kappa_per_run_W_mK": kappa_runs.tolist(),
        "lambda_star_per_run": (kappa_runs / LJ_KAPPA_UNIT).tolist(),
        "mean_temperature_K": res["mean_temperature_K"],
        "mean_temperature_reduced": res["mean_temperature_K"] / LJ_TEMPERATURE_UNIT,
        "temperature_per_run_K": run_temperatures,
        "running_integral_trace_W_mK": {f"{t:g}ps": float(running[at(t)]) for t in times},
        "running_integral_lambda_star": {f"{t:g}ps": float(running[at(t)] / LJ_KAPPA_UNIT)
                                         for t in times},
        "running_integral_lambda_star_per_run": {
            f"{t:g}ps": (per_run_running[:, at(t)] / LJ_KAPPA_UNIT).round(3).tolist()
            for t in times},
        "running_integral_lambda_star_mean_of_runs_every_sample": {
            "sample_fs": res["sample_fs"], "values": (running / LJ_KAPPA_UNIT).round(4).tolist()},
        "lambda_star_by_window": windows,
        "sampling_check": {
            "what": "the same runs' flux subsampled to twice the sampling interval "
                    f"({2 * timestep * sample_every:g} fs), same window and estimator",
            "lambda_star": float(coarse_l.mean()),
            "lambda_star_per_run": coarse_l.round(4).tolist(),
            "mean_difference_to_full_sampling": float(
                coarse_l.mean() - kappa_runs.mean() / LJ_KAPPA_UNIT)},
        "kappa_tensor_W_mK": np.asarray(res["kappa_W_mK"]).tolist(),
        "ns_per_day_with_heat_flux": res["ns_per_day_with_heat_flux"],
        "heat_flux_calls": flux.calls, "heat_flux_ms_per_call": 1e3 * flux.seconds / flux.calls,
        "heat_flux_compiled_variants": flux.flux.compiled_variants(),
        "wall_s": time.perf_counter() - t_start,
        "references": LIQUID_REFERENCES,
        "comparison": liquid_kappa_remarks(lam, lam_err),
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
    p.add_argument("--argon-phase", choices=("crystal", "liquid"), default="crystal",
                   help="liquid: Green-Kubo kappa of the LJ liquid near the triple point only "
                        "(the --liquid-* options), written to thermal_argon_liquid_<tag>.json")
    p.add_argument("--liquid-cells", type=int, default=5, help="n x n x n fcc cells (4 n^3 atoms)")
    p.add_argument("--liquid-runs", type=int, default=8)
    p.add_argument("--liquid-production", type=float, default=35.0, help="ps per run")
    p.add_argument("--liquid-timestep", type=float, default=4.0, help="fs")
    p.add_argument("--liquid-sample-every", type=int, default=10,
                   help="steps (a flux call costs ~120 ms for 500 atoms on a CPU, ~100 of them the host-side unfolding: 40 fs keeps it to about 3/4 of the cost)")
    p.add_argument("--liquid-max-lag", type=float, default=5.0,
                   help="ps (500 atoms: the integral peaks near 2 ps and falls by 5 ps in every "
                        "run; the JSON also has the 2 and 3 ps windows)")
    p.add_argument("--liquid-equilibration", type=float, default=10.0, help="ps per run")
    p.add_argument("--liquid-melt", type=float, default=10.0, help="ps at 300 K")
    p.add_argument("--liquid-cool", type=float, default=20.0, help="ps at the target temperature")
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
    if args.argon_phase == "liquid":
        out["argon_liquid"] = argon_liquid_kappa(
            args.liquid_cells, args.liquid_runs, args.liquid_production, args.liquid_sample_every,
            args.liquid_max_lag, timestep=args.liquid_timestep,
            equilibration_ps=args.liquid_equilibration, melt_ps=args.liquid_melt,
            cool_ps=args.liquid_cool)
        print(json.dumps(out["argon_liquid"], indent=1), flush=True)
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"thermal_argon_liquid_{args.tag}.json"
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path}")
        return
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
