"""Potential-energy-surface exploration (hot MD + quenches + de-duplication) on an argon-like
Lennard-Jones LJ7 cluster, whose four minima are known (Wales & Doye; Cambridge Cluster
Database). Units: eV, Å, fs, K (epsilon = 0.0104 eV, sigma = 3.4 Å, argon masses)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import so3krates  # noqa: F401  (float64)
from so3krates.md.engine import Simulation
from so3krates.md.explore import ExploreResult, explore, write_exploration
from so3krates.md.integrators import Ensemble
from so3krates.md.system import System

EPS, SIGMA = 0.0104, 3.4  # argon-like, eV and Å
LJ7_MINIMA = [-16.505384, -15.935, -15.593, -15.533]  # reduced units; multiply by EPS
CUTOFF = 10.0  # Å; the test potential uses all pairs anyway
# Settings the LJ7 exploration works with: T ~ 0.29 epsilon/kB (just below melting), 5 fs steps
# (the LJ time unit is ~2.1 ps for argon), a weak thermostat and 1 ps between quenches.
MD = dict(temperature=35.0, timestep=5.0, friction=0.001, quench_every_fs=1000.0)
# Forces in units of epsilon/sigma ~ 3e-3 eV/Å: tolerances much tighter than for molecules; the
# closest minima differ by 0.06 epsilon = 6e-4 eV.
QUENCH = dict(fmax=1e-5, max_relax_steps=5000, energy_tol=1e-4, rmsd_tol=0.2)


def lj_energy(positions: jnp.ndarray) -> jnp.ndarray:
    """All-pairs LJ energy in eV of (N, 3) positions in Å."""
    n = positions.shape[0]
    i, j = jnp.triu_indices(n, 1)
    r2 = jnp.sum((positions[j] - positions[i]) ** 2, axis=-1) / SIGMA**2
    inv6 = 1.0 / r2**3
    return jnp.sum(4.0 * EPS * (inv6**2 - inv6))


def lj_energy_fn(positions, cell, nbrs):
    """``energy_fn(positions, cell, neighbours)`` for the MD engine; ignores the cell and the
    neighbour list."""
    return lj_energy(positions)


def lj_force_fn(positions):
    e, g = jax.value_and_grad(lj_energy)(positions)
    return e, -g


def bipyramid() -> np.ndarray:
    """Pentagonal bipyramid (near the LJ7 global minimum), (7, 3) Å."""
    a = 2 ** (1 / 6) * SIGMA
    ang = 2 * np.pi * np.arange(5) / 5
    radius = a / (2 * np.sin(np.pi / 5))
    ring = np.stack([radius * np.cos(ang), radius * np.sin(ang), np.zeros(5)], axis=1)
    h = np.sqrt(a**2 - radius**2)
    return np.vstack([ring, [[0, 0, h], [0, 0, -h]]])


SYSTEM = System.from_numbers([18] * 7)


def test_lj7_md_conserves_energy_at_this_timestep():
    sim = Simulation(lj_energy_fn, SYSTEM, bipyramid(), Ensemble(kind="nve", timestep=MD["timestep"],
                     temperature=MD["temperature"]), CUTOFF, stride=50, chunk_frames=40, monitor=None)
    frames, unstable, _ = sim.run_chunk()  # 2000 steps = 10 ps
    assert unstable is None
    drift = np.ptp(frames.conserved_energy)
    assert drift < 2e-3 * EPS, drift
    assert np.ptp(frames.potential_energy) > 100 * drift  # energy really flows between KE and PE


def test_explore_lj7_finds_all_four_minima():
    progress: list[int] = []
    res = explore(lj_energy_fn, SYSTEM, bipyramid(), CUTOFF, **MD, **QUENCH, n_quenches=64, batch=32,
                  seed=0, on_progress=lambda r: progress.append(r.n_quenches))
    assert isinstance(res, ExploreResult)
    assert progress == [32, 64]
    assert res.n_quenches == 64 and not res.md_unstable and res.md_unstable_time_fs is None
    assert res.simulated_fs == pytest.approx(64 * 1000.0)
    assert res.settings["md_steps_per_quench"] == 200

    # All four minima, and nothing else (mirror images merged).
    ms = res.minima
    assert len(ms) == 4, sorted(np.asarray(ms.energies) / EPS)
    np.testing.assert_allclose(sorted(ms.energies), np.asarray(LJ7_MINIMA) * EPS, atol=2e-3 * EPS)
    # Every stored minimum is a true minimum: forces below fmax, Hessian positive except for the
    # six rigid-body modes.
    for x, e in zip(ms.positions, ms.energies):
        energy, forces = lj_force_fn(jnp.asarray(x))
        assert float(energy) == pytest.approx(e, abs=1e-12)
        assert float(jnp.linalg.norm(forces, axis=1).max()) <= QUENCH["fmax"]
        eig = np.linalg.eigvalsh(np.asarray(jax.hessian(lj_energy)(jnp.asarray(x))).reshape(21, 21))
        assert np.abs(eig[:6]).max() < 1e-4 and eig[6] > 1e-3, eig[:8]

    # The history is consistent with the minima set.
    t = res.column("time_fs")
    np.testing.assert_allclose(t, 1000.0 * np.arange(1, 65))
    conv = res.column("converged")
    assert res.n_unconverged == int((~conv).sum())
    assert sum(ms.counts) == int(conv.sum()) == ms.num_added
    assert res.n_distinct[-1] == 4 and np.all(np.diff(res.n_distinct) >= 0)
    index = res.column("index")
    assert np.all(index[~conv] == -1)
    for k in range(4):
        assert ms.counts[k] == int((index == k).sum())
        first = np.flatnonzero(index == k)[0]
        assert res.history[first].is_new and ms.found_at[k] == t[first]
        assert abs(res.history[first].energy - ms.energies[k]) < 1e-12


def test_explore_writes_files_and_counts_unconverged(tmp_path):
    import ase.io

    calls: list[int] = []
    # 10 quenches in batches of 4 (the last one padded); too few FIRE steps for some of them.
    res = explore(lj_energy_fn, SYSTEM, bipyramid(), CUTOFF, **dict(MD, quench_every_fs=500.0),
                  **dict(QUENCH, max_relax_steps=150), n_quenches=10, batch=4, seed=1,
                  on_progress=lambda r: calls.append(r.n_quenches))
    assert calls == [4, 8, 10] and res.n_quenches == 10
    conv = res.column("converged")
    assert 0 < res.n_unconverged < 10 and res.n_unconverged == int((~conv).sum())
    assert res.minima.num_added == int(conv.sum())  # unconverged quenches are not added
    assert np.all(res.column("fmax")[~conv] > QUENCH["fmax"])
    assert np.all(res.column("steps")[~conv] == 150)

    out = write_exploration(res, tmp_path / "explore", SYSTEM.numbers)
    assert sorted(p.name for p in out.iterdir()) == ["exploration.png", "minima.json", "minima.xyz"]
    assert (out / "exploration.png").stat().st_size > 1000
    frames = ase.io.read(out / "minima.xyz", index=":")
    energies = [f.get_potential_energy() for f in frames]
    assert len(frames) == len(res.minima) >= 1
    np.testing.assert_allclose(energies, sorted(res.minima.energies), atol=1e-10)
    assert all(len(f) == 7 and (f.numbers == 18).all() for f in frames)
    data = json.loads((out / "minima.json").read_text())
    assert data["n_quenches"] == 10 and data["n_unconverged"] == res.n_unconverged
    assert len(data["minima"]) == len(res.minima) and len(data["history"]) == 10
    assert data["settings"]["temperature_K"] == MD["temperature"]
    assert [m["energy"] for m in data["minima"]] == pytest.approx(energies)


def test_explore_stops_when_md_becomes_unstable(tmp_path):
    # A potential that turns into NaN once an atom leaves a 15 Å box: at 2000 K the cluster
    # evaporates, the MD stops at the first NaN and the exploration reports it.
    def bad_energy_fn(positions, cell, nbrs):
        bad = jnp.max(jnp.abs(positions - positions.mean(0))) > 15.0
        return jnp.where(bad, jnp.nan, lj_energy(positions))

    res = explore(bad_energy_fn, SYSTEM, bipyramid(), CUTOFF, **dict(MD, temperature=2000.0, quench_every_fs=100.0),
                  **QUENCH, n_quenches=400, batch=8, monitor=None)
    assert res.md_unstable and res.md_unstable_time_fs is not None
    assert res.n_quenches < 400
    assert res.simulated_fs == pytest.approx(res.md_unstable_time_fs)
    # Only snapshots taken before the instability were quenched.
    assert np.all(res.column("time_fs") < res.md_unstable_time_fs)
    write_exploration(res, tmp_path, SYSTEM.numbers)
    assert (tmp_path / "exploration.png").exists()
