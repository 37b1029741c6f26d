"""Thermal conductivity by Green–Kubo: equilibrate (Langevin), run NVE with the heat flux
recorded, integrate the flux autocorrelation, average over independent runs.

``κ_ab = 1 / (V k_B T²) ∫_0^τ <J_a(0) J_b(t)> dt`` with ``J`` the total energy flux of
:mod:`so3krates.heat_flux` (eV·Å/fs). The estimate is the running integral averaged over the
second half of the correlation window ``[τ/2, τ]`` (where a converged integral is flat), per
run; the reported value is the mean over runs and its standard error the runs' spread over
√runs. Cell-size and correlation-time convergence are the user's to check (the running
integral is plotted).

Two choices of the estimator matter for runs only a few windows long:

* The flux's sample mean is *not* subtracted: its equilibrium mean is exactly zero (J is odd
  under velocity reversal), and subtracting the sample mean of a run of length ``T`` lowers
  every lag of the correlation by about the variance of that mean, ``2 ∫C / T``, so the
  running integral at ``τ`` by a fraction of order ``2τ / T`` (a third for τ = 20 ps of a
  60 ps run).
* ``T`` in the prefactor is each NVE run's mean kinetic temperature, not the thermostat's
  target: a run's total energy is one draw from the canonical spread (±3.6 % in T for 256
  atoms), and ``1/T²`` would carry twice that error.

The tensor is reported symmetrised, ``(κ + κᵀ) / 2`` (Onsager; the integral of ``C_ab`` and
of ``C_ba`` over ``[0, τ]`` are the two halves of the two-sided integral).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from ase import units

from so3krates.md.engine import Frames, Simulation
from so3krates.md.integrators import Ensemble, maxwell_boltzmann
from so3krates.md.system import EnergyFn, System

# (eV·Å/fs)² fs / (Å³ eV/K K²) = eV / (Å fs K) in W / (m K)
KAPPA_UNIT = 1.602176634e-19 / (1e-10 * 1e-15)


def autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    """``C_ab(k) = <x_a(t) x_b(t + k)>`` for lags k < ``max_lag``, (max_lag, 3, 3), averaged
    over all available time origins (FFT, zero-padded)."""
    n = x.shape[0]
    size = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(x, size, axis=0)
    c = np.fft.irfft(np.conj(f)[:, :, None] * f[:, None, :], size, axis=0)[:max_lag]
    return c / (n - np.arange(max_lag))[:, None, None]


def green_kubo(flux: np.ndarray, sample_fs: float, volume: float, temperature: float,
               max_lag_fs: float, subtract_mean: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Lags (L,) in fs and the running integral κ(τ) (L, 3, 3) in W/(m K) of a heat-flux
    series ``flux`` (F, 3) eV·Å/fs sampled every ``sample_fs``; volume Å³, temperature K.
    ``subtract_mean``: correlate the fluctuations about the sample mean instead of the flux
    (biased low for runs a few windows long; see the module docstring)."""
    lags = min(int(round(max_lag_fs / sample_fs)) + 1, flux.shape[0])
    flux = np.asarray(flux, np.float64)
    c = autocorrelation(flux - flux.mean(0) if subtract_mean else flux, lags)
    integral = np.concatenate([np.zeros((1, 3, 3)),
                               np.cumsum(0.5 * (c[1:] + c[:-1]), axis=0) * sample_fs])
    kappa = integral / (volume * units.kB * temperature**2) * KAPPA_UNIT
    return np.arange(lags) * sample_fs, kappa


def plateau(kappa: np.ndarray) -> np.ndarray:
    """The mean of a running integral (L, 3, 3) over its second half, symmetrised: (3, 3)."""
    k = kappa[kappa.shape[0] // 2 :].mean(axis=0)
    return 0.5 * (k + k.T)


def thermal_conductivity(
    energy_fn: EnergyFn,
    heat_flux: Callable,
    system: System,
    positions: np.ndarray,
    cutoff: float,
    *,
    temperature: float = 300.0,
    runs: int = 3,
    equilibration_fs: float = 10_000.0,
    production_fs: float = 50_000.0,
    timestep: float = 1.0,
    sample_every: int = 4,
    max_lag_fs: float = 10_000.0,
    friction: float = 0.01,
    seed: int = 0,
    on_run: Callable[[int, dict], None] | None = None,
) -> dict:
    """Green–Kubo κ of a periodic structure over ``runs`` independent runs.

    Args:
        energy_fn: the MD energy function (``so3krates.md.system``).
        heat_flux: ``(positions, velocities Å/fs, cell) -> (J, J_pot, J_conv)``, e.g. a
            :class:`so3krates.heat_flux.HeatFlux` of the same potential.
        system, positions (Å), cutoff (Å): the structure and the potential's cutoff.
        temperature: K. runs: independent runs (seeds ``seed``, ``seed + 1``, ...).
        equilibration_fs: Langevin MD before each production run.
        production_fs: NVE MD with the heat flux recorded, per run.
        timestep: fs. sample_every: steps between heat-flux samples.
        max_lag_fs: length of the correlation window.
        friction: Langevin friction (1/fs) of the equilibration.
        on_run: called with (run index, its result) after each run.

    Returns a dict with ``kappa`` (3, 3) W/(m K), ``kappa_mean`` (trace / 3), their standard
    errors, the per-run values, the lags and the run-averaged running integral, the flux
    statistics and the speed of the production MD with heat flux (ns/day). Each run's κ uses
    that run's mean kinetic temperature. ``on_run`` also gets the run's flux series
    (``flux``, (F, 3) eV·Å/fs every ``sample_every`` steps).
    """
    if not system.pbc.all():
        raise ValueError("thermal conductivity needs a cell periodic in all three directions")
    volume = abs(float(np.linalg.det(system.cell)))
    sample_fs = sample_every * timestep
    n_eq = int(round(equilibration_fs / timestep / sample_every)) * sample_every
    n_prod = int(round(production_fs / timestep / sample_every)) * sample_every
    if n_prod * timestep < 2 * max_lag_fs:
        raise ValueError(f"production ({production_fs} fs) must be at least twice the "
                         f"correlation window ({max_lag_fs} fs)")
    per_run, integrals = [], []
    md_seconds, md_steps = 0.0, 0
    # One simulation of each kind for all runs (compiled once); runs differ by their seeds.
    eq = Simulation(energy_fn, system, positions, Ensemble("langevin", timestep, temperature, friction),
                    cutoff, stride=sample_every, monitor=None, seed=seed)
    nve = None
    for r in range(runs):
        if r:
            key, v_key = jax.random.split(jax.random.PRNGKey(seed + r))
            v = maxwell_boltzmann(v_key, system.masses, temperature, system.degrees_of_freedom)
            eq.set_state(positions, np.asarray(v) * units.fs,
                         np.zeros((2, eq.ensemble.chain_length)), key, 0)
        if n_eq:
            eq.run(n_eq)
        state = eq.state_arrays()
        if nve is None:
            nve = Simulation(energy_fn, system, state["positions"],
                             Ensemble("nve", timestep, temperature), cutoff, stride=sample_every,
                             monitor=None, velocities=state["velocities"], spec=eq.spec)
        else:
            nve.set_state(state["positions"], state["velocities"], state["chain"], state["key"], 0,
                          state["cell"])
        fluxes: list[np.ndarray] = []
        temps: list[np.ndarray] = []

        def record(frames: Frames) -> None:
            for k in range(len(frames)):
                fluxes.append(heat_flux(frames.positions[k], frames.velocities[k], frames.cell[k])[0])
            temps.append(frames.temperature)

        t0 = time.perf_counter()
        summary = nve.run(n_prod, record)
        md_seconds += time.perf_counter() - t0
        md_steps += summary.steps
        if not summary.stable:
            raise RuntimeError(f"run {r}: the NVE production became unstable at "
                               f"{summary.time_to_instability_fs} fs")
        flux = np.asarray(fluxes)
        mean_t = float(np.mean(np.concatenate(temps)))
        lags, kappa = green_kubo(flux, sample_fs, volume, mean_t, max_lag_fs)
        integrals.append(kappa)
        result = {"kappa": plateau(kappa), "flux_std": flux.std(axis=0),
                  "mean_temperature_K": mean_t, "flux": flux}
        per_run.append(result)
        if on_run is not None:
            on_run(r, result)
    k = np.stack([p["kappa"] for p in per_run])
    k_mean = np.trace(k, axis1=1, axis2=2) / 3.0
    sem = (lambda a: a.std(axis=0, ddof=1) / np.sqrt(len(a))) if runs > 1 else (
        lambda a: np.full(a.shape[1:], np.nan))
    return {
        "kappa_W_mK": k.mean(axis=0),
        "kappa_W_mK_stderr": sem(k),
        "kappa_mean_W_mK": float(k_mean.mean()),
        "kappa_mean_W_mK_stderr": float(sem(k_mean)),
        "kappa_mean_per_run_W_mK": k_mean.tolist(),
        "lags_fs": lags,
        "running_integral_W_mK": np.mean(integrals, axis=0),
        "running_integral_per_run_W_mK": np.stack(integrals),
        "temperature_K": temperature,
        "mean_temperature_K": float(np.mean([p["mean_temperature_K"] for p in per_run])),
        "volume_A3": volume,
        "runs": runs,
        "production_fs_per_run": n_prod * timestep,
        "sample_fs": sample_fs,
        "max_lag_fs": float(lags[-1]),
        "ns_per_day_with_heat_flux": md_steps * timestep * 1e-6 / md_seconds * 86400.0,
    }


def plot_running_integral(result: dict, path: str | Path) -> Path:
    """κ(τ) (trace / 3) per run and averaged, with the plateau window shaded."""
    from so3krates.plotting import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lags_ps = np.asarray(result["lags_fs"]) / 1e3
    for k in result["running_integral_per_run_W_mK"]:
        ax.plot(lags_ps, np.trace(k, axis1=1, axis2=2) / 3, color="0.7", lw=0.8)
    mean = np.trace(result["running_integral_W_mK"], axis1=1, axis2=2) / 3
    ax.plot(lags_ps, mean, color="C0", lw=2, label="mean of runs")
    ax.axvspan(lags_ps[len(lags_ps) // 2], lags_ps[-1], color="C1", alpha=0.1, label="plateau window")
    ax.axhline(result["kappa_mean_W_mK"], color="C1", lw=1)
    ax.set_xlabel("correlation time / ps")
    ax.set_ylabel("κ / W m⁻¹ K⁻¹")
    ax.set_title(f"Green–Kubo, {result['temperature_K']:g} K: κ = {result['kappa_mean_W_mK']:.3g}"
                 f" ± {result['kappa_mean_W_mK_stderr']:.2g} W/m/K")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
