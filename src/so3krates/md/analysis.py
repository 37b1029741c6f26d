"""MD trajectory analysis: velocity autocorrelation, vibrational spectrum, g(r), energy drift.

Units: positions Å, velocities Å/fs, time fs, energies eV, masses amu, wavenumbers cm⁻¹.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from ase import units

from so3krates.fileio import atomic_write_bytes
from so3krates.neighbours.verlet import complete_cell, plane_spacings
from so3krates.md.trajectory import Trajectory
from so3krates.md.trajectory_read import read_trajectory
from so3krates.plotting import pyplot, save_figure

SPEED_OF_LIGHT_CM_PER_FS = 2.99792458e-5
# Kinetic energy of 1 amu moving at 1 Å/fs, in eV (≈ 103.6).
AMU_A2_PER_FS2_IN_EV = 1.0 / units.fs**2


def velocity_autocorrelation(
    velocities: np.ndarray,
    masses: np.ndarray | None = None,
    max_lag: int | None = None,
) -> np.ndarray:
    """Normalised velocity autocorrelation function C(τ) = <v(t)·v(t+τ)> / <v(t)·v(t)>.

    Computed with zero-padded FFTs (no circular wrap-around) and averaged over the F − τ
    overlapping time origins of each lag (unbiased estimator), summed over atoms and Cartesian
    components.

    Parameters
    ----------
    velocities
        (F, N, 3) velocities, any unit (the result is dimensionless).
    masses
        Optional (N,) masses; if given each atom is weighted by its mass (kinetic-energy
        weighting, as for the vibrational density of states).
    max_lag
        Number of lags returned (lags 0 … max_lag − 1, in frames); defaults to F // 2, beyond
        which few time origins remain and the estimate gets noisy.

    Returns
    -------
    np.ndarray
        (max_lag,) with C(0) = 1.
    """
    v = np.asarray(velocities, dtype=np.float64)
    if v.ndim != 3 or v.shape[2] != 3:
        raise ValueError(f"velocities must have shape (F, N, 3), got {v.shape}")
    n_frames = v.shape[0]
    if n_frames < 2:
        raise ValueError("need at least 2 frames for an autocorrelation")
    max_lag = max(1, n_frames // 2) if max_lag is None else int(max_lag)
    if not 1 <= max_lag <= n_frames:
        raise ValueError(f"max_lag must be in [1, {n_frames}], got {max_lag}")
    weights = np.ones(v.shape[1]) if masses is None else np.asarray(masses, np.float64)
    if weights.shape != (v.shape[1],):
        raise ValueError(f"masses {weights.shape} do not match {v.shape[1]} atoms")
    cols = v.reshape(n_frames, -1)
    col_weights = np.repeat(weights, 3)
    n_fft = 1 << int(np.ceil(np.log2(2 * n_frames - 1)))  # ≥ 2F − 1: no circular overlap
    acf = np.zeros(max_lag)
    # Columns in blocks so that long trajectories of many atoms stay within memory.
    block = max(1, (1 << 22) // n_fft)  # ~32 MiB of spectra per block
    for start in range(0, cols.shape[1], block):
        spec = np.fft.rfft(cols[:, start:start + block], n=n_fft, axis=0)
        power = (spec.real**2 + spec.imag**2) @ col_weights[start:start + block]
        acf += np.fft.irfft(power, n=n_fft)[:max_lag]
    acf /= n_frames - np.arange(max_lag)
    if acf[0] <= 0:
        raise ValueError("velocities are all zero; the autocorrelation is undefined")
    return acf / acf[0]


def vibrational_spectrum(
    vacf: np.ndarray, timestep_fs: float, window: str | None = "hann"
) -> tuple[np.ndarray, np.ndarray]:
    """Power spectrum (vibrational density of states) from a velocity autocorrelation function.

    The VACF is multiplied by a window decaying from 1 at lag 0 to 0 at the last lag (against
    truncation ripples), mirrored to an even function of time and Fourier transformed; by the
    Wiener–Khinchin theorem this is the power spectrum of the velocities.

    Parameters
    ----------
    vacf
        (L,) autocorrelation at lags 0 … L − 1, spaced by ``timestep_fs``.
    timestep_fs
        Time between lags in fs.
    window
        ``"hann"``, ``"blackman"``, ``"hamming"`` or ``None`` (no window).

    Returns
    -------
    wavenumber_cm1, intensity
        (L,) each; wavenumbers in cm⁻¹ (spacing 1 / (2 (L − 1) Δt c)), intensity normalised
        to a maximum of 1.
    """
    c = np.asarray(vacf, dtype=np.float64).reshape(-1)
    n_lag = c.size
    if n_lag < 2:
        raise ValueError("need at least 2 lags for a spectrum")
    if timestep_fs <= 0:
        raise ValueError(f"timestep_fs must be positive, got {timestep_fs}")
    if window is not None:
        windows = {"hann": np.hanning, "blackman": np.blackman, "hamming": np.hamming}
        if window not in windows:
            raise ValueError(f"unknown window {window!r}; known: {', '.join(windows)} or None")
        c = c * windows[window](2 * n_lag - 1)[n_lag - 1:]  # right half: 1 at lag 0
    even = np.concatenate([c, c[-2:0:-1]])  # C(−τ) = C(τ): a real cosine transform
    intensity = np.fft.rfft(even).real
    freq_per_fs = np.fft.rfftfreq(even.size, d=timestep_fs)
    peak = np.max(np.abs(intensity))
    if peak > 0:
        intensity = intensity / peak
    return freq_per_fs / SPEED_OF_LIGHT_CM_PER_FS, intensity


def find_peaks(x: np.ndarray, y: np.ndarray, n_peaks: int = 5,
               min_relative_height: float = 0.05) -> list[dict[str, float]]:
    """The ``n_peaks`` highest interior local maxima of ``y`` above ``min_relative_height``·max.

    Returns a list of ``{"position": x, "height": y}``, highest first.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.size < 3:
        return []
    interior = np.arange(1, y.size - 1)
    is_peak = (y[1:-1] > y[:-2]) & (y[1:-1] >= y[2:]) & (y[1:-1] >= min_relative_height * y.max())
    idx = interior[is_peak]
    idx = idx[np.argsort(-y[idx])][:n_peaks]
    return [{"position": float(x[i]), "height": float(y[i])} for i in idx]


def radial_distribution(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray | bool,
    r_max: float,
    n_bins: int = 200,
    numbers: np.ndarray | None = None,
    elements: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Radial distribution function averaged over frames.

    Periodic systems (any ``pbc``): g(r) normalised by the ideal-gas pair density of the cell,
    g_ab(r) = V / (N_a (N_b − δ_ab)) · Σ_{i∈a, j∈b, j≠i} δ(r − r_ij) / (4π r²), so that g → 1
    for an uncorrelated system. Choose ``r_max`` below half the shortest cell width, otherwise
    an atom's own periodic images are counted too. For partly periodic cells (slabs) V is the
    full cell volume including vacuum.

    Non-periodic systems (molecules, no volume): the pair-distance distribution of pairs closer
    than ``r_max``, normalised to unit area (∫ g dr = 1), in Å⁻¹.

    Parameters
    ----------
    positions
        (F, N, 3) or (N, 3) in Å.
    cell
        (3, 3) cell in Å (rows are cell vectors), constant over the frames.
    pbc
        (3,) or scalar periodic boundary conditions.
    r_max
        Largest distance in Å.
    n_bins
        Number of equal-width bins on [0, r_max].
    numbers
        (N,) atomic numbers; needed with ``elements``.
    elements
        Optional pair of atomic numbers (a, b), e.g. ``(1, 8)`` for H–O pairs.

    Returns
    -------
    r, g
        (n_bins,) bin centres in Å and the distribution.
    """
    from vesin import NeighborList

    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim == 2:
        pos = pos[None]
    if pos.ndim != 3 or pos.shape[2] != 3:
        raise ValueError(f"positions must have shape (F, N, 3), got {pos.shape}")
    n_atoms = pos.shape[1]
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    periodic = bool(pbc.any())
    if r_max <= 0:
        raise ValueError(f"r_max must be positive, got {r_max}")
    if elements is not None:
        if numbers is None:
            raise ValueError("elements needs numbers")
        numbers = np.asarray(numbers).reshape(-1)
        za, zb = (int(e) for e in elements)
        in_a, in_b = numbers == za, numbers == zb
        n_a, n_b = int(in_a.sum()), int(in_b.sum())
        if n_a == 0 or n_b == 0 or (za == zb and n_a < 2):
            raise ValueError(f"not enough atoms of elements {elements} for pairs")
    else:
        za = zb = None
        n_a = n_b = n_atoms
    same = za == zb  # also true without selection
    edges = np.linspace(0.0, r_max, n_bins + 1)
    counts = np.zeros(n_bins)
    # A half list: each pair (and each periodic image pair) exactly once.
    calculator = NeighborList(cutoff=float(r_max), full_list=False)
    box = cell if periodic else np.zeros((3, 3))
    for frame in pos:
        i, j, d = calculator.compute(points=frame, box=box, periodic=pbc.tolist() if periodic
                                     else False, quantities="ijd")
        if elements is not None:
            keep = (in_a[i] & in_b[j]) | (in_b[i] & in_a[j])
            d = d[keep]
        counts += np.histogram(d, bins=edges)[0]
    counts /= pos.shape[0]
    r = 0.5 * (edges[1:] + edges[:-1])
    if not periodic:
        total = counts.sum()
        return r, counts / (total * np.diff(edges)) if total else counts
    volume = abs(float(np.linalg.det(cell)))
    if volume <= 0:
        raise ValueError("periodic g(r) needs a cell with non-zero volume")
    # Ordered pairs: a half list counts a–a pairs once, a–b pairs (a ≠ b) once each.
    ordered = 2.0 * counts if same else counts
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    ideal = n_a * (n_b - (1 if same else 0)) / volume * shell
    return r, ordered / ideal


def energy_drift(time_fs: np.ndarray, total_energy: np.ndarray, n_atoms: int) -> dict[str, float]:
    """Conservation of the total energy of an NVE run.

    Parameters
    ----------
    time_fs
        (F,) times in fs.
    total_energy
        (F,) potential + kinetic energy in eV.
    n_atoms
        Number of atoms (results are per atom).

    Returns
    -------
    dict
        ``slope_mev_per_atom_per_ps``: slope of a least-squares line;
        ``max_deviation_mev_per_atom``: max |E(t) − E(0)|; ``std_mev_per_atom``: standard
        deviation of E(t); all in meV/atom.
    """
    t = np.asarray(time_fs, dtype=np.float64).reshape(-1)
    e = np.asarray(total_energy, dtype=np.float64).reshape(-1) * 1000.0 / n_atoms
    if t.shape != e.shape or t.size < 2:
        raise ValueError("time_fs and total_energy must have the same length ≥ 2")
    slope = np.polyfit(t / 1000.0, e, 1)[0]
    return {
        "slope_mev_per_atom_per_ps": float(slope),
        "max_deviation_mev_per_atom": float(np.max(np.abs(e - e[0]))),
        "std_mev_per_atom": float(np.std(e)),
    }


def kinetic_energy(velocities: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """(F,) kinetic energies in eV from velocities (F, N, 3) in Å/fs and masses (N,) in amu."""
    v = np.asarray(velocities, dtype=np.float64)
    return 0.5 * np.einsum("fni,n->f", v**2, np.asarray(masses, float)) * AMU_A2_PER_FS2_IN_EV


def finite_difference_velocities(traj: Trajectory) -> np.ndarray:
    """(F, N, 3) velocities in Å/fs by central differences of positions over ``traj.time``.

    Periodic displacements are unwrapped with the minimum-image convention first, so atoms
    crossing the cell boundary do not produce spurious jumps (needs frames closer than half a
    cell width of motion apart).
    """
    if traj.time is None:
        raise ValueError("finite-difference velocities need the time of every frame")
    if traj.n_frames < 2:
        raise ValueError("finite-difference velocities need at least 2 frames")
    steps = np.diff(traj.positions, axis=0)
    if traj.pbc.any():
        cell = complete_cell(traj.cell, traj.pbc)  # slabs may store a zero open-direction vector
        frac = steps @ np.linalg.inv(cell)
        frac[..., traj.pbc] -= np.round(frac[..., traj.pbc])
        steps = frac @ cell
    unwrapped = np.concatenate([traj.positions[:1], traj.positions[:1] + np.cumsum(steps, 0)])
    return np.gradient(unwrapped, traj.time, axis=0)


def plot_md_summary(
    path_png: str | os.PathLike,
    n_atoms: int,
    time: np.ndarray | None = None,
    potential_energy: np.ndarray | None = None,
    kinetic_energy: np.ndarray | None = None,
    temperature: np.ndarray | None = None,
) -> Path:
    """Energies (potential, kinetic, total), total-energy drift and temperature against time.

    Per-frame series (F,) in fs, eV and K; any may be None. Potential and total energy are
    shifted by the same constant (the first potential energy), so that total − kinetic =
    potential holds on the plot; the middle panel shows the total energy relative to its
    initial value in meV/atom. Uses the frame index without times.
    """
    plt = pyplot()
    series = [a for a in (time, potential_energy, kinetic_energy, temperature) if a is not None]
    n_frames = len(series[0]) if series else 0
    x = time / 1000.0 if time is not None else np.arange(n_frames)
    xlabel = "time / ps" if time is not None else "frame"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    pot, kin = potential_energy, kinetic_energy
    shift = float(pot[0]) if pot is not None else 0.0
    if pot is not None:
        ax.plot(x, pot - shift, label=f"potential {-shift:+.3f} eV")
    if kin is not None:
        ax.plot(x, kin, label="kinetic")
    if pot is not None and kin is not None:
        ax.plot(x, pot + kin - shift, label="total (same shift)", color="k")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("energy / eV")
    ax.grid(alpha=0.3)
    if pot is not None or kin is not None:
        ax.legend(fontsize=8)
    # Conservation is invisible on the scale of the fluctuations: its own panel, per atom.
    ax = axes[1]
    if pot is not None and kin is not None:
        total = (pot + kin) * 1000.0 / n_atoms
        ax.plot(x, total - total[0], color="k")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("total energy − initial / meV/atom")
    ax.grid(alpha=0.3)
    ax = axes[2]
    if temperature is not None:
        ax.plot(x, temperature, color="tab:red")
        ax.axhline(float(np.mean(temperature)), color="0.5", ls="--", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("temperature / K")
    ax.grid(alpha=0.3)
    return save_figure(fig, path_png)


def _plot_xy(x, y, xlabel: str, ylabel: str, path: Path, peaks: list[dict] | None = None,
             xlim: tuple[float, float] | None = None) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(x, y, lw=1.2)
    for p in peaks or []:
        ax.axvline(p["position"], color="0.6", ls=":", lw=1)
        ax.annotate(f"{p['position']:.0f}", (p["position"], p["height"]), fontsize=7)
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _jsonable(x):
    """NaN/inf → None and numpy scalars → Python, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def analyze(
    traj_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    r_max: float = 6.0,
    max_lag_fs: float | None = None,
    n_peaks: int = 5,
) -> dict:
    """Analyse an MD trajectory: writes vacf.png, spectrum.png, rdf.png, energy.png, analysis.json.

    The VACF is mass-weighted; without stored velocities, central finite differences of the
    positions are used (``velocities_source`` in the JSON says which). Time-dependent analyses
    (VACF, spectrum, drift) need equally spaced frame times and are skipped with a ``notes``
    entry otherwise. The energy drift uses potential + kinetic energy (kinetic recomputed
    from velocities if not stored).

    Parameters
    ----------
    traj_path
        Any trajectory :func:`read_trajectory` reads.
    output_dir
        Folder for the plots and ``analysis.json`` (created).
    r_max
        Largest distance of g(r) in Å (reduced to just under half the shortest periodic cell
        width if larger).
    max_lag_fs
        Longest VACF lag in fs; defaults to half the trajectory length.
    n_peaks
        Number of spectrum peaks reported.

    Returns
    -------
    dict
        The content of ``analysis.json``.
    """
    traj = read_trajectory(traj_path)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_frames, n_atoms = traj.positions.shape[:2]
    result: dict = {"trajectory": str(traj_path), "n_frames": int(n_frames),
                    "n_atoms": int(n_atoms), "notes": [], "plots": {}}

    dt = None
    if traj.time is not None and n_frames >= 2:
        steps = np.diff(traj.time)
        if steps[0] > 0 and np.allclose(steps, steps[0], rtol=1e-4, atol=1e-6):
            dt = float(np.mean(steps))
        else:
            result["notes"].append("frame times are not equally spaced: VACF/spectrum skipped")
    elif traj.time is None:
        result["notes"].append("trajectory has no time: VACF/spectrum/drift skipped")
    result["timestep_fs"] = dt
    result["duration_fs"] = float(traj.time[-1] - traj.time[0]) if traj.time is not None else None

    velocities = traj.velocities
    result["velocities_source"] = "stored"
    if velocities is None:
        if traj.time is not None and n_frames >= 2:
            velocities = finite_difference_velocities(traj)
            result["velocities_source"] = "finite differences of positions"
            result["notes"].append("no velocities in the file: used finite differences of "
                                   "positions (less accurate, esp. at high frequencies)")
        else:
            result["velocities_source"] = None

    # Temperature and energy conservation.
    if traj.temperature is not None:
        result["temperature_mean_K"] = float(np.mean(traj.temperature))
        result["temperature_std_K"] = float(np.std(traj.temperature))
    kin = traj.kinetic_energy
    if kin is None and velocities is not None and result["velocities_source"] == "stored":
        kin = kinetic_energy(velocities, traj.masses)
    if traj.potential_energy is not None and kin is not None and traj.time is not None \
            and n_frames >= 2:
        result["energy_drift"] = energy_drift(traj.time, traj.potential_energy + kin, n_atoms)
    else:
        result["energy_drift"] = None
    result["plots"]["energy"] = str(plot_md_summary(
        out / "energy.png", n_atoms, traj.time, traj.potential_energy, kin, traj.temperature))

    # VACF and vibrational spectrum.
    result["spectrum_peaks_cm1"] = None
    if dt is not None and velocities is not None and n_frames >= 4:
        max_lag = None if max_lag_fs is None else int(np.clip(round(max_lag_fs / dt) + 1, 2,
                                                              n_frames))
        vacf = velocity_autocorrelation(velocities, traj.masses, max_lag)
        lag_fs = np.arange(vacf.size) * dt
        wavenumber, intensity = vibrational_spectrum(vacf, dt)
        peaks = find_peaks(wavenumber, intensity, n_peaks)
        result["vacf_max_lag_fs"] = float(lag_fs[-1])
        result["spectrum_resolution_cm1"] = float(wavenumber[1])
        result["spectrum_peaks_cm1"] = peaks
        result["plots"]["vacf"] = str(_plot_xy(lag_fs, vacf, "lag / fs", "normalised VACF",
                                               out / "vacf.png"))
        top = max([p["position"] for p in peaks], default=wavenumber[-1])
        result["plots"]["spectrum"] = str(_plot_xy(
            wavenumber, intensity, "wavenumber / cm⁻¹", "intensity (normalised)",
            out / "spectrum.png", peaks, xlim=(0.0, min(wavenumber[-1], 1.25 * top + 200.0))))

    # Cell, density and pressure (NPT trajectories have a cell per frame).
    varying_cell = False
    if traj.cells is not None and traj.pbc.all():
        volume = np.abs(np.linalg.det(traj.cells))
        density = float(np.sum(traj.masses)) / units.mol / (volume * 1e-24)  # g/cm³
        result.update(volume_mean_A3=float(volume.mean()), volume_std_A3=float(volume.std()),
                      density_mean_g_cm3=float(density.mean()),
                      density_std_g_cm3=float(density.std()))
        if traj.pressure is not None:
            result.update(pressure_mean_bar=float(np.mean(traj.pressure)),
                          pressure_std_bar=float(np.std(traj.pressure)))
        varying_cell = bool(np.ptp(volume) > 1e-9 * volume.mean())
        if varying_cell and traj.time is not None:
            result["plots"]["volume"] = str(_plot_xy(traj.time, volume, "time / fs", "volume / Å³",
                                                     out / "volume.png"))
            if traj.pressure is not None:
                result["plots"]["pressure"] = str(_plot_xy(
                    traj.time, traj.pressure, "time / fs", "pressure / bar", out / "pressure.png"))

    # Radial distribution.
    rdf_r_max = float(r_max)
    if varying_cell:
        result["notes"].append("the cell changes over the trajectory: g(r) uses the first "
                               "frame's cell")
    if traj.pbc.any():
        widths = plane_spacings(complete_cell(traj.cell, traj.pbc))[traj.pbc]
        if rdf_r_max >= 0.5 * widths.min():
            rdf_r_max = 0.499 * float(widths.min())
            result["notes"].append(f"g(r) r_max reduced to {rdf_r_max:.3f} Å (half the cell)")
    r, g = radial_distribution(traj.positions, traj.cell, traj.pbc, rdf_r_max)
    first = find_peaks(r, g, 1)
    result["rdf"] = {"r_max": rdf_r_max, "periodic": bool(traj.pbc.any()),
                     "first_peak_r": first[0]["position"] if first else None}
    ylabel = "g(r)" if traj.pbc.any() else "pair-distance distribution / Å⁻¹"
    result["plots"]["rdf"] = str(_plot_xy(r, g, "r / Å", ylabel, out / "rdf.png"))

    result = _jsonable(result)
    atomic_write_bytes(out / "analysis.json", (json.dumps(result, indent=2) + "\n").encode())
    return result
