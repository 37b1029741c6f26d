"""NPT in the compiled engine (MTK barostat) and device neighbour lists that follow the cell.

Lennard-Jones argon (``so3krates.terms.LennardJones``) as the potential: cheap and exact, and
ASE runs the same potential for the reference ensemble averages.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLennardJones

from so3krates.batching import single_graph
from so3krates.md import Ensemble, Simulation, System
from so3krates.md.system import graph
from so3krates.neighbours import verlet as nl
from so3krates.potential import predict_fn
from so3krates.terms import LennardJones

LJ = LennardJones(sigma=3.405, epsilon=0.0104, rc=8.5, ro=7.0)


def argon(n: int, a: float = 5.30) -> "ase.Atoms":  # noqa: F821
    return bulk("Ar", "fcc", a=a, cubic=True).repeat((n, n, n))


def lj_energy_fn(system: System):
    n = system.n_atoms

    def energy_fn(positions, cell, nbrs):
        return LJ.atomic_energy_fn(None, graph(positions, cell, system, nbrs))[:n]

    return energy_fn


def host_energy(positions, cell, capacity=None) -> float:
    g, _ = single_graph(np.full(len(positions), 18), positions, cell, np.ones(3, bool), LJ.rc,
                        capacity, dtype=np.float64)
    return float(_lj_predict(None, g).energy[0])


_lj_predict = jax.jit(predict_fn(LJ.atomic_energy_fn))


def test_neighbour_list_follows_a_box_compressed_by_20_percent():
    """A 2x2x2 cell (10.6 Å) shrinks to 8.5 Å: the list must be rebuilt as the cell shrinks and
    the lattice images re-allocated when 1 image per axis no longer covers 9 Å; at every
    frame the energy equals the one from a fresh host list."""
    atoms = argon(2)
    system = System.from_atoms(atoms)
    energy_fn = lj_energy_fn(system)
    spec = nl.allocate(atoms.positions, atoms.cell[:], atoms.pbc, LJ.rc, 0.5)
    assert max(abs(i) for img in spec.images for i in img) == 1

    @jax.jit(static_argnames="spec")
    def energy_and_update(positions, cell, nbrs, spec):
        nbrs = nl.update(positions, cell, nbrs, spec)
        return jnp.sum(energy_fn(positions, cell, nbrs)), nbrs

    rng = np.random.default_rng(0)
    cell0, x0 = atoms.cell[:], atoms.positions.copy()
    # One padded size for every frame's host list (the densest frame's, with room): one compile.
    _, capacity = single_graph(atoms.numbers, x0 * 0.79, cell0 * 0.79, atoms.pbc, LJ.rc)
    nbrs = nl.build(jnp.asarray(x0), jnp.asarray(cell0), spec)
    rebuilds, reallocations = 0, 0
    for k, s in enumerate(np.linspace(1.0, 0.8, 41)):
        cell = cell0 * s
        x = x0 * s + rng.normal(scale=0.03, size=x0.shape)
        reference = nbrs.verlet.reference
        e, new = energy_and_update(jnp.asarray(x), jnp.asarray(cell), nbrs, spec)
        while bool(new.overflow):  # what the engine does: grow on the host, rebuild, redo
            spec = nl.grow(spec, new)
            reallocations += 1
            nbrs = nl.build(jnp.asarray(x), jnp.asarray(cell), spec)
            e, new = energy_and_update(jnp.asarray(x), jnp.asarray(cell), nbrs, spec)
        rebuilds += int(not np.array_equal(np.asarray(new.verlet.reference), np.asarray(reference)))
        nbrs = new
        assert float(e) == pytest.approx(host_energy(x, cell, capacity), rel=1e-12, abs=1e-12), k
    assert reallocations >= 1 and max(abs(i) for img in spec.images for i in img) >= 2
    assert rebuilds >= 5


def run_npt(atoms, ensemble: Ensemble, n_steps: int, stride: int = 10, seed: int = 0):
    system = System.from_atoms(atoms)
    sim = Simulation(lj_energy_fn(system), system, atoms.positions, ensemble, LJ.rc, skin=0.5,
                     stride=stride, chunk_frames=100, monitor=None, seed=seed)
    frames = []
    summary = sim.run(n_steps, frames.append)
    assert summary.stable
    return {k: np.concatenate([getattr(f, k) for f in frames]) for k in frames[0]._fields}


NPT = dict(temperature=40.0, tau=200.0, barostat_tau=500.0)


@pytest.mark.parametrize("isotropic", [True, False], ids=["isotropic", "full_cell"])
def test_npt_conserves_its_extended_energy_to_second_order(isotropic):
    """MTK's conserved quantity: fluctuations shrink ~4x when the timestep halves; no drift."""
    atoms = argon(2)
    fluct = {}
    for dt in (2.0, 1.0):
        ens = Ensemble("npt", dt, pressure=5000.0, isotropic=isotropic, **NPT)
        f = run_npt(atoms, ens, int(2000 / dt), stride=int(10 / dt))
        e = f["conserved_energy"]
        assert np.ptp(f["volume"]) > 1.0  # the cell does move
        if not isotropic:  # and changes shape: full cell fluctuations
            c = f["cell"]
            assert np.abs(c[:, 0, 1]).max() > 1e-3
        fluct[dt] = np.std(e)
        t = f["step"] * dt
        drift = abs(np.polyfit(t, e, 1)[0]) * 1e3 / len(atoms)  # eV/ps per atom
        assert drift < 1e-5, drift
    assert 3.0 < fluct[2.0] / fluct[1.0] < 5.0, fluct


def block_mean(x: np.ndarray, blocks: int = 10) -> tuple[float, float]:
    """Mean and its standard error from block averages."""
    b = np.array([np.mean(c) for c in np.array_split(x, blocks)])
    return float(np.mean(b)), float(np.std(b, ddof=1) / np.sqrt(blocks))


@pytest.mark.slow
def test_npt_mean_pressure_and_volume_match_the_target_and_ase():
    """Mean pressure = target within its error; mean volume = ASE's IsotropicMTKNPT with the
    same potential, within the combined error."""
    from ase.md.nose_hoover_chain import IsotropicMTKNPT
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    atoms = argon(2)
    target, dt, equil, n = 2000.0, 4.0, 2500, 15000  # bar, fs, steps
    ens = Ensemble("npt", dt, pressure=target, isotropic=True, **NPT)
    f = run_npt(atoms, ens, equil + n, stride=10)
    keep = f["step"] > equil
    p_mean, p_err = block_mean(f["pressure"][keep])
    v_mean, v_err = block_mean(f["volume"][keep])
    assert abs(p_mean - target) < 3 * p_err + 50.0, (p_mean, p_err)

    ref = atoms.copy()
    ref.calc = AseLennardJones(sigma=LJ.sigma, epsilon=LJ.epsilon, rc=LJ.rc, ro=LJ.ro,
                               smooth=True)
    thermalize_momenta(ref, temperature_K=NPT["temperature"], rng=np.random.default_rng(1))
    Stationary(ref)
    md = IsotropicMTKNPT(ref, dt * units.fs, temperature_K=NPT["temperature"],
                         pressure_au=target * units.bar, tdamp=NPT["tau"] * units.fs,
                         pdamp=NPT["barostat_tau"] * units.fs)
    md.run(equil // 4)
    volumes = []
    for _ in range(n // 40):
        md.run(10)
        volumes.append(ref.get_volume())
    a_mean, a_err = block_mean(np.asarray(volumes))
    print(f"pressure {p_mean:.0f} +- {p_err:.0f} bar (target {target:.0f}); volume "
          f"{v_mean:.2f} +- {v_err:.2f} A^3, ASE IsotropicMTKNPT {a_mean:.2f} +- {a_err:.2f}")
    assert abs(v_mean - a_mean) < 3 * np.hypot(v_err, a_err), (v_mean, v_err, a_mean, a_err)


def test_npt_restart_continues_exactly():
    """The restart arrays carry cell, cell momentum and both chains."""
    atoms = argon(2)
    system = System.from_atoms(atoms)
    ens = Ensemble("npt", 2.0, pressure=5000.0, **NPT)

    def sim():
        return Simulation(lj_energy_fn(system), system, atoms.positions, ens, LJ.rc, skin=0.5,
                          stride=10, chunk_frames=10, monitor=None, seed=3)

    whole = sim()
    whole.run(400)
    first = sim()
    first.run(200)
    arrays = first.state_arrays()
    second = sim()
    second.set_state(arrays["positions"], arrays["velocities"], arrays["chain"], arrays["key"],
                     int(arrays["step"]), arrays["cell"], arrays["cell_momentum"],
                     arrays["barostat_chain"])
    second.run(200)
    a, b = whole.state_arrays(), second.state_arrays()
    assert np.abs(a["cell"] - atoms.cell[:]).max() > 1e-3
    for key in ("positions", "velocities", "cell", "cell_momentum", "barostat_chain", "chain"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-9, atol=1e-9, err_msg=key)
