"""Materials commands end to end: cell relaxation (ASE filter and JAX FIRE), equation of
state, NPT MD, thermal conductivity, with a tiny model trained on the shipped Cu set; and the
JAX cell filter against ASE's on Lennard-Jones argon."""

from __future__ import annotations

import json

import ase.io
import jax
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLennardJones
from ase.stress import voigt_6_to_full_3x3_stress

from so3krates.cli import main
from so3krates.md import System
from so3krates.md.relax import fire_relax, relax_ase
from so3krates.md.system import cell_filter, graph
from so3krates.terms import LennardJones

LJ = LennardJones(sigma=3.405, epsilon=0.0104, rc=8.5, ro=6.5)


def test_jax_cell_relaxation_matches_ase_for_lj_argon():
    atoms = bulk("Ar", "fcc", a=5.0, cubic=True).repeat((2, 2, 2))  # compressed
    atoms.set_cell(atoms.cell[:] @ np.array([[1.0, 0.03, 0.0], [0.0, 1.02, 0.0], [0.0, 0.0, 0.98]]),
                   scale_atoms=True)
    atoms.rattle(0.02, seed=1)
    pressure = 1000.0 * units.bar
    system = System.from_atoms(atoms)

    def energy_fn(positions, cell, nbrs):
        return LJ.atomic_energy_fn(None, graph(positions, cell, system, nbrs))[: len(atoms)]

    filt = cell_filter(energy_fn, system, LJ.rc, atoms.positions, pressure)
    res = jax.device_get(fire_relax(filt.force_fn, filt.x0, fmax=1e-5, max_steps=5000))
    assert bool(res.converged)
    positions, cell = filt.unpack(res.positions)

    calc = AseLennardJones(sigma=LJ.sigma, epsilon=LJ.epsilon, rc=LJ.rc, ro=LJ.ro, smooth=True)
    ours = atoms.copy()
    ours.set_cell(cell, scale_atoms=False)
    ours.positions = positions
    ours.calc = calc
    sigma = voigt_6_to_full_3x3_stress(ours.get_stress())
    # What the convergence criterion guarantees: |σ + P| <= fmax * cell_factor / V.
    bound = 1e-5 * filt.cell_factor / ours.get_volume()
    assert np.abs(sigma + pressure * np.eye(3)).max() <= bound
    assert bound < 1e-3 * pressure
    assert np.abs(ours.get_forces()).max() < 1e-4
    ref = relax_ase(atoms, calc, "FIRE", fmax=1e-5, steps=5000, cell=True, pressure=pressure,
                    smax=1e-7)
    assert ref.converged
    assert ours.get_volume() == pytest.approx(ref.atoms.get_volume(), rel=1e-5)
    lengths = np.sort(ours.cell.lengths())
    np.testing.assert_allclose(lengths, np.sort(ref.atoms.cell.lengths()), rtol=1e-4)


@pytest.fixture
def cu_cell(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True)  # expanded: the model wants it smaller
    atoms.rattle(0.02, seed=0)
    path = tmp_path / "cu.xyz"
    ase.io.write(path, atoms)
    return path


@pytest.mark.slow
def test_relax_cell_and_eos_commands_agree(trained_cu_model_dir, cu_cell, tmp_path):
    volumes = {}
    for opt in ("fire-jax", "FIRE"):
        out = tmp_path / f"relaxed_{opt}.xyz"
        code = main(["relax", str(trained_cu_model_dir), str(cu_cell), "--cell", "--optimizer",
                     opt, "--fmax", "0.005", "--smax", "200", "--steps", "3000",
                     "--output", str(out), "--dtype", "float64"])
        assert code == 0, opt
        relaxed = ase.io.read(out)
        assert relaxed.info["converged"] and relaxed.info["stress_deviation_bar"] <= 200.0
        volumes[opt] = relaxed.get_volume()
    assert volumes["fire-jax"] == pytest.approx(volumes["FIRE"], rel=2e-3)
    start = ase.io.read(cu_cell).get_volume()
    assert abs(volumes["FIRE"] - start) > 1e-3 * start  # the cell did change

    assert main(["eos", str(trained_cu_model_dir), str(tmp_path / "relaxed_FIRE.xyz"),
                 "--strain", "0.03", "--output", str(tmp_path / "eos"), "--dtype",
                 "float64"]) == 0
    eos = json.loads((tmp_path / "eos" / "eos.json").read_text())
    assert eos["b0_GPa"] > 0
    # The zero-pressure volume of the relaxation is the minimum of E(V).
    assert eos["v0_A3"] == pytest.approx(volumes["FIRE"], rel=5e-3)


def cu32(tmp_path, a: float):
    """A 32-atom fcc Cu cell with lattice constant ``a`` (Å) written to a file."""
    path = tmp_path / "cu32.xyz"
    ase.io.write(path, bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 2)))
    return path


@pytest.mark.slow
def test_md_npt_command_writes_cells_and_pressure(trained_cu_model_dir, tmp_path):
    src = cu32(tmp_path, 3.6)
    out = tmp_path / "npt.h5"
    code = main(["md", str(trained_cu_model_dir), str(src), "--ensemble", "npt", "--pressure",
                 "20000", "--isotropic", "--temperature", "300", "--timestep", "2", "--steps", "600",
                 "--stride", "20", "--chunk", "10", "--output", str(out), "--no-progress",
                 "--max-bond-deviation", "1.0"])  # the tiny model is a soft crystal
    assert code == 0
    from so3krates.md.trajectory_read import read_trajectory

    traj = read_trajectory(out)
    assert traj.cells.shape == (30, 3, 3) and np.ptp(traj.cells[:, 0, 0]) > 1e-3
    assert np.isfinite(traj.pressure).all()
    summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
    assert summary["target_pressure_bar"] == 20000.0
    assert np.isfinite(summary["mean_pressure_bar_this_run"])
    assert summary["mean_density_g_cm3_this_run"] > 5.0
    assert main(["analyze", str(out), "--output", str(tmp_path / "ana")]) == 0
    ana = json.loads((tmp_path / "ana" / "analysis.json").read_text())
    assert ana["density_mean_g_cm3"] == pytest.approx(summary["mean_density_g_cm3_this_run"],
                                                      rel=0.02)
    assert np.isfinite(ana["pressure_mean_bar"]) and "volume" in ana["plots"]


def test_materials_commands_reject_molecules(trained_model_dir, tmp_path, capsys):
    from so3krates.datasets import shipped_dataset_path

    for cmd in (["thermal-conductivity"], ["eos"], ["relax", "--cell"]):
        extra = cmd[1:]
        code = main([cmd[0], str(trained_model_dir), str(shipped_dataset_path()), "--output",
                     str(tmp_path / "x"), *extra])
        assert code == 2, cmd
        err = capsys.readouterr().out
        assert "periodic" in err and "Traceback" not in err, err


@pytest.mark.slow
def test_thermal_conductivity_command(trained_cu_model_dir, tmp_path):
    src = cu32(tmp_path, 3.7)
    out = tmp_path / "kappa"
    code = main(["thermal-conductivity", str(trained_cu_model_dir), str(src), "--temperature",
                 "300", "--runs", "2", "--equilibration", "0.5", "--production", "2",
                 "--timestep", "2", "--sample-every", "2", "--max-lag", "0.5", "--output", str(out)])
    assert code == 0
    res = json.loads((out / "kappa.json").read_text())
    assert len(res["kappa_mean_per_run_W_mK"]) == 2
    assert np.isfinite(res["kappa_mean_W_mK"]) and np.isfinite(res["kappa_mean_W_mK_stderr"])
    assert np.asarray(res["kappa_W_mK"]).shape == (3, 3)
    assert (out / "running_integral.png").exists()
