"""MD trajectory files, restart state and analysis: round trips and physical properties."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from so3krates.md.analysis import (
    SPEED_OF_LIGHT_CM_PER_FS,
    analyze,
    energy_drift,
    find_peaks,
    kinetic_energy,
    radial_distribution,
    velocity_autocorrelation,
    vibrational_spectrum,
)
from so3krates.md.restart import load_state, save_state
from so3krates.md.trajectory import TrajectoryWriter, truncate_trajectory
from so3krates.md.trajectory_read import read_trajectory

FORMATS = (".xyz", ".traj", ".h5")


def harmonic_velocities(wavenumbers_cm1, n_per_mode: int, n_frames: int, dt_fs: float, seed=0):
    """(F, N, 3) analytic velocities of independent oscillators with random phases."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) * dt_fs
    blocks = []
    for wn in wavenumbers_cm1:
        omega = 2 * np.pi * wn * SPEED_OF_LIGHT_CM_PER_FS  # rad/fs
        phase = rng.uniform(0, 2 * np.pi, size=(n_per_mode, 3))
        blocks.append(np.cos(omega * t[:, None, None] + phase))
    return np.concatenate(blocks, axis=1)


# --- VACF and spectrum ---------------------------------------------------------------------


def test_vacf_matches_direct_unbiased_estimate_and_is_one_at_zero():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(64, 3, 3))
    masses = np.array([1.0, 12.0, 16.0])
    got = velocity_autocorrelation(v, masses=masses, max_lag=40)
    direct = np.array([
        np.einsum("fni,fni,n->", v[: 64 - k], v[k:], masses) / (64 - k) for k in range(40)
    ])
    assert got.shape == (40,)
    assert got[0] == pytest.approx(1.0)
    np.testing.assert_allclose(got, direct / direct[0], rtol=1e-10, atol=1e-12)
    # Mass weighting matters for these data.
    assert not np.allclose(velocity_autocorrelation(v, max_lag=40), got)


def test_vacf_of_cosine_is_cosine():
    dt = 0.5
    v = harmonic_velocities([1500.0], n_per_mode=200, n_frames=800, dt_fs=dt)
    vacf = velocity_autocorrelation(v)
    assert vacf.shape == (400,)
    omega = 2 * np.pi * 1500.0 * SPEED_OF_LIGHT_CM_PER_FS
    np.testing.assert_allclose(vacf, np.cos(omega * np.arange(400) * dt), atol=0.03)


def test_spectrum_peaks_at_the_oscillator_frequencies():
    dt = 0.5
    v = harmonic_velocities([1000.0, 3000.0], n_per_mode=10, n_frames=4000, dt_fs=dt)
    vacf = velocity_autocorrelation(v, masses=np.ones(20))
    wn, intensity = vibrational_spectrum(vacf, dt)
    bin_width = wn[1] - wn[0]
    assert bin_width == pytest.approx(1 / (2 * (vacf.size - 1) * dt * SPEED_OF_LIGHT_CM_PER_FS))
    peaks = sorted(p["position"] for p in find_peaks(wn, intensity, n_peaks=2))
    assert len(peaks) == 2
    assert abs(peaks[0] - 1000.0) <= bin_width
    assert abs(peaks[1] - 3000.0) <= bin_width
    # Nothing of note away from the two modes (window leakage stays small).
    far = (np.abs(wn - 1000) > 150) & (np.abs(wn - 3000) > 150)
    assert np.max(np.abs(intensity[far])) < 0.02


# --- radial distribution -------------------------------------------------------------------


def test_rdf_of_uniform_random_points_is_one():
    rng = np.random.default_rng(2)
    box, n_atoms, n_frames = 10.0, 400, 4
    pos = rng.uniform(0, box, size=(n_frames, n_atoms, 3))
    r, g = radial_distribution(pos, np.eye(3) * box, True, r_max=4.9, n_bins=49)
    dr = r[1] - r[0]
    # Expected unordered pair counts per bin → Poisson error of g in each bin.
    expected = n_frames * n_atoms * (n_atoms - 1) / 2 / box**3 * 4 * np.pi * r**2 * dr
    away = r > 1.0
    assert np.all(np.abs(g[away] - 1) < 5 / np.sqrt(expected[away]))
    assert np.mean(g[r > 2.0]) == pytest.approx(1.0, abs=0.01)


def test_rdf_fcc_first_peak_and_coordination():
    a = 3.6
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(3)
    r, g = radial_distribution(atoms.positions, atoms.cell[:], atoms.pbc, r_max=5.0, n_bins=200)
    dr = r[1] - r[0]
    assert abs(r[np.argmax(g)] - a / np.sqrt(2)) <= dr
    rho = (len(atoms) - 1) / atoms.get_volume()  # density of the *other* atoms
    first_shell = r < 3.0
    coordination = np.sum(rho * g[first_shell] * 4 / 3 * np.pi
                          * ((r[first_shell] + dr / 2) ** 3 - (r[first_shell] - dr / 2) ** 3))
    assert coordination == pytest.approx(12.0, rel=1e-9)


def test_rdf_element_pairs_rocksalt():
    a = 5.64
    atoms = bulk("NaCl", "rocksalt", a=a, cubic=True).repeat(2)
    kw = dict(cell=atoms.cell[:], pbc=True, r_max=5.5, n_bins=110, numbers=atoms.numbers)
    r, g_nacl = radial_distribution(atoms.positions, elements=(11, 17), **kw)
    _, g_nana = radial_distribution(atoms.positions, elements=(11, 11), **kw)
    dr = r[1] - r[0]
    assert abs(r[np.argmax(g_nacl)] - a / 2) <= dr
    assert np.all(g_nana[r < a / np.sqrt(2) - dr] == 0)  # no Na–Na pairs at the Na–Cl distance
    assert abs(r[np.nonzero(g_nana)[0][0]] - a / np.sqrt(2)) <= dr
    with pytest.raises(ValueError, match="numbers"):
        radial_distribution(atoms.positions, atoms.cell[:], True, 5.0, elements=(11, 17))


def test_pair_distribution_of_molecule_has_unit_area():
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    r, g = radial_distribution(atoms.positions, np.zeros((3, 3)), False, r_max=3.0, n_bins=300)
    assert np.sum(g) * (r[1] - r[0]) == pytest.approx(1.0)
    assert abs(r[np.argmax(g)] - 0.96) <= r[1] - r[0]


# --- energy drift --------------------------------------------------------------------------


def test_energy_drift_recovers_linear_slope():
    rng = np.random.default_rng(3)
    n_atoms, slope = 10, 0.5  # meV/atom/ps
    t = np.arange(0.0, 10_000.0, 5.0)  # fs
    e = -100.0 + slope * 1e-3 * n_atoms * t / 1000 + rng.normal(scale=1e-4, size=t.size)
    drift = energy_drift(t, e, n_atoms)
    assert drift["slope_mev_per_atom_per_ps"] == pytest.approx(slope, rel=0.01)
    assert drift["max_deviation_mev_per_atom"] == pytest.approx(slope * 10, rel=0.05)
    assert drift["std_mev_per_atom"] == pytest.approx(slope * 10 / np.sqrt(12), rel=0.05)


def test_kinetic_energy_units():
    # A hydrogen atom at 0.01 Å/fs = 1000 m/s: ½ m v² = 0.5 · 1.008 u · 1e6 m²/s² ≈ 5.22 meV.
    ke = kinetic_energy(np.array([[[0.01, 0.0, 0.0]]]), np.array([1.008]))
    assert ke[0] == pytest.approx(0.5 * 1.008 * 1.66053907e-27 * 1e6 / 1.602176634e-19, rel=1e-6)


# --- trajectory files ----------------------------------------------------------------------


def fake_frames(n_frames: int, n_atoms: int = 4, t0: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    return dict(
        positions=rng.uniform(0, 5, size=(n_frames, n_atoms, 3)),
        velocities=rng.normal(scale=0.02, size=(n_frames, n_atoms, 3)),  # Å/fs
        forces=rng.normal(size=(n_frames, n_atoms, 3)),
        potential_energy=-10.0 + rng.normal(size=n_frames),
        kinetic_energy=rng.uniform(0.1, 0.2, size=n_frames),
        temperature=rng.uniform(250, 350, size=n_frames),
        time=t0 + 0.5 * np.arange(n_frames),
    )


NUMBERS = np.array([8, 1, 1, 6])
CELL = np.diag([5.0, 6.0, 7.0])
PBC = np.array([True, True, True])


def write_chunks(path, chunks, append_first=False):
    for k, chunk in enumerate(chunks):
        with TrajectoryWriter(path, NUMBERS, CELL, PBC, append=append_first or k > 0) as w:
            w.write(**chunk)


@pytest.mark.parametrize("suffix", FORMATS)
def test_writer_reader_round_trip_in_two_appended_chunks(tmp_path, suffix):
    path = tmp_path / f"md{suffix}"
    first, second = fake_frames(3), fake_frames(2, t0=1.5, seed=1)
    write_chunks(path, [first, second])
    traj = read_trajectory(path)
    # extxyz stores 8 decimals; the binary formats are exact.
    atol = 1e-8 if suffix == ".xyz" else 1e-12
    assert traj.n_frames == 5
    np.testing.assert_array_equal(traj.numbers, NUMBERS)
    np.testing.assert_allclose(traj.cell, CELL)
    np.testing.assert_array_equal(traj.pbc, PBC)
    for key in ("positions", "velocities", "forces", "potential_energy", "kinetic_energy",
                "temperature", "time"):
        want = np.concatenate([first[key], second[key]])
        np.testing.assert_allclose(getattr(traj, key), want, rtol=1e-12, atol=atol, err_msg=key)


@pytest.mark.parametrize("suffix", [".traj", ".xyz"])
def test_velocities_read_back_by_ase(tmp_path, suffix):
    path = tmp_path / f"md{suffix}"
    frames = fake_frames(1)
    write_chunks(path, [frames])
    atoms = ase.io.read(path)
    # ASE's get_velocities() is in Å per ASE time unit; ×units.fs gives Å/fs.
    from ase import units

    np.testing.assert_allclose(atoms.get_velocities() * units.fs, frames["velocities"][0],
                               rtol=1e-6 if suffix == ".xyz" else 1e-12)
    assert atoms.get_temperature() > 0
    assert atoms.get_potential_energy() == pytest.approx(frames["potential_energy"][0])


def test_reads_foreign_ase_trajectory(tmp_path):
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]])
    atoms.set_velocities([[0.1, 0, 0], [-0.1, 0, 0]])  # ASE units
    path = tmp_path / "foreign.traj"
    ase.io.write(path, [atoms, atoms])
    traj = read_trajectory(path)
    from ase import units

    np.testing.assert_allclose(traj.velocities[0, 0], [0.1 * units.fs, 0, 0], rtol=1e-12)
    assert traj.time is None and traj.potential_energy is None and traj.forces is None


def test_unknown_extension_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"\.h5"):
        TrajectoryWriter(tmp_path / "md.dcd", NUMBERS, CELL, PBC)


@pytest.mark.parametrize("suffix", FORMATS)
def test_truncate_then_continue(tmp_path, suffix):
    path = tmp_path / f"md{suffix}"
    frames = fake_frames(5)
    write_chunks(path, [frames])
    assert truncate_trajectory(path, 3) == 2
    later = fake_frames(2, t0=1.5, seed=7)
    write_chunks(path, [later], append_first=True)
    traj = read_trajectory(path)
    want = np.concatenate([frames["positions"][:3], later["positions"]])
    np.testing.assert_allclose(traj.positions, want, atol=1e-8)
    np.testing.assert_allclose(traj.time, [0, 0.5, 1.0, 1.5, 2.0])
    with pytest.raises(ValueError, match="fewer"):
        truncate_trajectory(path, 6)


def test_killed_run_keeps_written_chunks(tmp_path):
    """A process killed without closing its writers leaves every written chunk readable."""
    paths = [tmp_path / f"md{suffix}" for suffix in FORMATS]
    src = Path(__file__).resolve().parents[1] / "src"
    script = f"""
import os, sys, numpy as np
sys.path.insert(0, {str(src)!r})
from so3krates.md.trajectory import TrajectoryWriter
writers = [TrajectoryWriter(p, np.array([1, 8]), np.eye(3) * 5, True)
           for p in {[str(p) for p in paths]!r}]
for k in range(2):
    for w in writers:
        w.write(np.full((3, 2, 3), float(k)), velocities=np.zeros((3, 2, 3)),
                potential_energy=np.zeros(3), kinetic_energy=np.zeros(3),
                temperature=np.zeros(3), time=np.arange(3) + 3.0 * k)
os._exit(0)  # no close(), no atexit handlers: as if killed
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    for path in paths:
        traj = read_trajectory(path)
        np.testing.assert_allclose(traj.time, np.arange(6.0), err_msg=path.name)


def test_truncate_drops_partial_xyz_frame(tmp_path):
    path = tmp_path / "md.xyz"
    write_chunks(path, [fake_frames(4)])
    text = path.read_text()
    with open(path, "a") as fh:  # a run killed in the middle of a frame
        fh.write("\n".join(text.splitlines()[:3]) + "\n")
    assert truncate_trajectory(path, 4) == 0
    assert path.read_text() == text


# --- restart state -------------------------------------------------------------------------


def test_state_round_trip_and_errors(tmp_path):
    arrays = {"positions": np.random.default_rng(0).normal(size=(5, 3)),
              "rng_key": np.array([1, 2], dtype=np.uint32), "step": np.array(1234)}
    meta = {"step": 1234, "time_fs": 617.0, "frames_written": 12, "thermostat": {"T": 300.0}}
    path = tmp_path / "state.npz"
    save_state(path, arrays, meta)
    got, got_meta = load_state(path)
    assert got_meta == meta
    assert set(got) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(got[key], value)
        assert got[key].dtype == value.dtype
    with pytest.raises(ValueError, match="does not exist"):
        load_state(tmp_path / "missing.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_state(corrupt)
    corrupt.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="corrupt"):
        load_state(corrupt)
    with pytest.raises(ValueError, match="object"):
        save_state(tmp_path / "bad.npz", {"x": np.array([{}], dtype=object)}, {})


# --- end to end ----------------------------------------------------------------------------


def test_analyze_end_to_end(tmp_path):
    dt, n_frames = 1.0, 400
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    v = 0.01 * harmonic_velocities([250.0], n_per_mode=len(atoms), n_frames=n_frames, dt_fs=dt)
    # Positions consistent with the velocities (x = ∫ v dt) to also exercise g(r).
    t = np.arange(n_frames) * dt
    disp = np.cumsum(v, axis=0) * dt
    pos = atoms.positions + disp
    kin = kinetic_energy(v, atoms.get_masses())
    path = tmp_path / "md.h5"
    with TrajectoryWriter(path, atoms.numbers, atoms.cell[:], atoms.pbc) as w:
        for sl in (slice(0, 250), slice(250, None)):
            w.write(pos[sl], velocities=v[sl], potential_energy=1.0 - kin[sl],
                    kinetic_energy=kin[sl], temperature=300 + 0 * t[sl], time=t[sl])
    out = tmp_path / "analysis"
    result = analyze(path, out, r_max=3.0)
    for name in ("vacf.png", "spectrum.png", "rdf.png", "energy.png", "analysis.json"):
        assert (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "analysis.json").read_text())
    assert on_disk == result
    assert result["n_frames"] == n_frames and result["timestep_fs"] == pytest.approx(dt)
    assert result["velocities_source"] == "stored"
    assert abs(result["spectrum_peaks_cm1"][0]["position"] - 250.0) <= \
        result["spectrum_resolution_cm1"]
    assert abs(result["energy_drift"]["slope_mev_per_atom_per_ps"]) < 1e-6
    assert result["temperature_mean_K"] == pytest.approx(300.0)
    assert abs(result["rdf"]["first_peak_r"] - 3.6 / np.sqrt(2)) < 0.1

    # Without stored velocities: finite differences, and the JSON says so.
    images = [Atoms(atoms.numbers, positions=p, cell=atoms.cell, pbc=True, info={"time_fs": tk})
              for p, tk in zip(pos, t)]
    xyz = tmp_path / "positions_only.xyz"
    ase.io.write(xyz, images, format="extxyz")
    fd = analyze(xyz, tmp_path / "fd", r_max=3.0)
    assert fd["velocities_source"] == "finite differences of positions"
    assert abs(fd["spectrum_peaks_cm1"][0]["position"] - 250.0) <= fd["spectrum_resolution_cm1"]
