"""Tests for reading reference data: npz layouts (sGDML, mlff-style), ASE formats, units.

Small synthetic files are written to ``tmp_path``; the real reference data under
``../shared/data`` is used where present and the tests that need it are skipped otherwise.
Errors on bad input: ``test_reader_errors.py``; splits: ``test_splits.py``.
"""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from reader_helpers import (ETHANOL_Z, KCAL_MOL, periodic_frames, random_molecule,
                            shared_file, write_sgdml)
from so3krates.data import Dataset, read_dataset
from so3krates.datasets import shipped_dataset_path


# --------------------------------------------------------------------------------------------
# 1. sGDML npz (R, z, E, F), kcal/mol -> eV
# --------------------------------------------------------------------------------------------


def test_sgdml_npz_converts_kcal_per_mol_to_ev(tmp_path):
    path = tmp_path / "tiny_sgdml.npz"
    ref = write_sgdml(path, n_struct=5, n_atoms=3)
    data = read_dataset(path, energy_unit="kcal/mol")

    assert isinstance(data, Dataset)
    assert len(data) == 5
    np.testing.assert_array_equal(data.n_atoms, [3] * 5)
    for k in range(5):
        np.testing.assert_array_equal(data.numbers[k], [8, 1, 1])
        assert data.numbers[k].dtype.kind == "i"
        # positions are in Å already: unchanged
        np.testing.assert_allclose(data.positions[k], ref["R"][k], rtol=0, atol=1e-12)
        np.testing.assert_allclose(data.forces[k], ref["F"][k] * KCAL_MOL, rtol=1e-12)
    assert data.energy.shape == (5,)
    np.testing.assert_allclose(data.energy, ref["E"][:, 0] * KCAL_MOL, rtol=1e-12)
    # the factor really is ~0.0434 eV per kcal/mol (guards against an inverted factor)
    assert KCAL_MOL == pytest.approx(0.0433641, rel=1e-5)
    np.testing.assert_array_equal(data.cells, np.zeros((5, 3, 3)))
    assert not data.pbc.any()
    assert data.elements == [1, 8]


def test_sgdml_npz_in_ev_is_unchanged(tmp_path):
    path = tmp_path / "tiny_ev.npz"
    ref = write_sgdml(path, n_struct=3, n_atoms=3, E=np.array([-1.0, -2.0, -3.0]))
    data = read_dataset(path)  # default: eV, Å
    np.testing.assert_array_equal(data.energy, [-1.0, -2.0, -3.0])
    for k in range(3):
        np.testing.assert_array_equal(data.forces[k], ref["F"][k])


def test_length_unit_bohr_scales_positions_and_forces(tmp_path):
    path = tmp_path / "bohr.npz"
    ref = write_sgdml(path, n_struct=2, n_atoms=3)
    data = read_dataset(path, energy_unit="Hartree", length_unit="Bohr")
    np.testing.assert_allclose(data.energy, ref["E"][:, 0] * units.Hartree, rtol=1e-12)
    for k in range(2):
        np.testing.assert_allclose(data.positions[k], ref["R"][k] * units.Bohr, rtol=1e-12)
        np.testing.assert_allclose(
            data.forces[k], ref["F"][k] * units.Hartree / units.Bohr, rtol=1e-12
        )


@pytest.fixture(scope="module")
def md17_ethanol():
    path = shared_file("md17_ethanol_2000.npz")
    return path, read_dataset(path, energy_unit="kcal/mol")


def test_md17_ethanol_real_npz(md17_ethanol):
    path, data = md17_ethanol
    assert len(data) == 2000
    np.testing.assert_array_equal(data.n_atoms, [9] * 2000)
    assert data.elements == [1, 6, 8]
    assert sorted(data.numbers[0].tolist()) == sorted(ETHANOL_Z)
    with np.load(path) as raw:
        E, F, R = raw["E"], raw["F"], raw["R"]
    assert E.shape == (2000, 1)
    np.testing.assert_allclose(data.energy, E.reshape(-1) * KCAL_MOL, rtol=1e-12)
    np.testing.assert_allclose(data.positions[1234], R[1234], rtol=0, atol=0)
    np.testing.assert_allclose(data.forces[1234], F[1234] * KCAL_MOL, rtol=1e-12)
    # about -4215 eV (≈ -97 200 kcal/mol) after conversion; MD fluctuations are < 1 eV
    assert np.all(np.abs(data.energy - (-4215.0)) < 2.0)
    assert np.abs(data.energy.mean() - (-4215.0)) < 1.0
    assert 0.01 < data.energy.std() < 1.0
    # forces of MD17 ethanol are a few eV/Å at most
    f = np.concatenate([x.ravel() for x in data.forces])
    assert np.all(np.isfinite(f)) and 0.1 < np.sqrt(np.mean(f**2)) < 5.0


# --------------------------------------------------------------------------------------------
# 2. mlff-style npz with variable-size molecules padded with Z = 0
# --------------------------------------------------------------------------------------------


def test_mlff_npz_drops_padding_atoms(tmp_path):
    rng = np.random.default_rng(1)
    sizes = [3, 5, 2, 4]
    n_max = max(sizes)
    S = len(sizes)
    positions = np.zeros((S, n_max, 3))
    numbers = np.zeros((S, n_max), dtype=np.int64)
    forces = np.zeros((S, n_max, 3))
    energy = rng.normal(-50.0, 3.0, size=S)
    real = []
    for k, n in enumerate(sizes):
        r = random_molecule(rng, n)
        z = rng.choice([1, 6, 7, 8], size=n)
        f = rng.normal(size=(n, 3))
        positions[k, :n], numbers[k, :n], forces[k, :n] = r, z, f
        # padding: all at the origin (they would "overlap" if kept) with junk forces
        positions[k, n:] = 0.0
        forces[k, n:] = np.nan
        real.append((z, r, f))
    path = tmp_path / "mlff.npz"
    np.savez(path, positions=positions, atomic_numbers=numbers, energy=energy, forces=forces)

    data = read_dataset(path)
    assert len(data) == S
    np.testing.assert_array_equal(data.n_atoms, sizes)
    for k, (z, r, f) in enumerate(real):
        np.testing.assert_array_equal(data.numbers[k], z)
        np.testing.assert_array_equal(data.positions[k], r)
        np.testing.assert_array_equal(data.forces[k], f)
        assert 0 not in data.numbers[k]
    np.testing.assert_array_equal(data.energy, energy)
    assert data.elements == sorted({int(v) for z, _, _ in real for v in z})


def test_mlff_npz_energy_column_vector_and_kj_per_mol(tmp_path):
    rng = np.random.default_rng(2)
    r = np.stack([random_molecule(rng, 2) for _ in range(3)])
    path = tmp_path / "mlff_col.npz"
    np.savez(
        path,
        positions=r,
        atomic_numbers=np.array([1, 1]),  # 1-D: same molecule in every structure
        energy=np.array([[1.0], [2.0], [3.0]]),
        forces=np.ones((3, 2, 3)),
    )
    data = read_dataset(path, energy_unit="kJ/mol")
    np.testing.assert_allclose(data.energy, np.array([1.0, 2.0, 3.0]) * units.kJ / units.mol)
    np.testing.assert_allclose(data.forces[2], np.full((2, 3), units.kJ / units.mol))
    assert [z.tolist() for z in data.numbers] == [[1, 1]] * 3


# --------------------------------------------------------------------------------------------
# 3. ASE formats: extxyz (default and custom keys), periodic extxyz, ASE trajectory
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    path = shipped_dataset_path()
    return path, read_dataset(path)


def test_shipped_extxyz_default_keys(shipped):
    path, data = shipped
    assert len(data) == 800
    np.testing.assert_array_equal(data.n_atoms, [9] * 800)
    assert data.elements == [1, 6, 8]
    frames = ase.io.read(path, index=":")
    for k in (0, 417, 799):
        atoms = frames[k]
        # labels come from ASE's SinglePointCalculator
        assert isinstance(atoms.calc, SinglePointCalculator)
        assert data.energy[k] == pytest.approx(atoms.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(data.forces[k], atoms.get_forces(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(data.positions[k], atoms.positions, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(data.numbers[k], atoms.numbers)
    # GFN2-xTB ethanol: about -310 eV
    assert np.all(np.abs(data.energy - (-310.0)) < 5.0)
    assert not data.pbc.any()


def test_extxyz_custom_keys_real_file():
    path = shared_file("md17_ethanol_100_refkeys.xyz")
    data = read_dataset(path, energy_key="REF_energy", forces_key="REF_forces")
    assert len(data) == 100
    np.testing.assert_array_equal(data.n_atoms, [9] * 100)
    assert sorted(data.numbers[0].tolist()) == sorted(ETHANOL_Z)
    frames = ase.io.read(path, index=":")
    for k in (0, 50, 99):
        assert data.energy[k] == pytest.approx(frames[k].info["REF_energy"], abs=1e-9)
        np.testing.assert_allclose(data.forces[k], frames[k].arrays["REF_forces"], atol=1e-12)
    # first frame's label as written in the file
    assert data.energy[0] == pytest.approx(-4214.66865017095, abs=1e-9)
    assert np.all(np.abs(data.energy - (-4215.0)) < 2.0)


def test_extxyz_custom_keys_synthetic(tmp_path):
    rng = np.random.default_rng(3)
    frames = []
    for k in range(3):
        a = Atoms("OH2", positions=random_molecule(rng, 3))
        a.info["my_E"] = -10.0 - k
        a.arrays["my_F"] = np.full((3, 3), 0.5 * k)
        frames.append(a)
    path = tmp_path / "custom.extxyz"
    ase.io.write(path, frames, format="extxyz")
    data = read_dataset(path, energy_key="my_E", forces_key="my_F")
    np.testing.assert_allclose(data.energy, [-10.0, -11.0, -12.0])
    np.testing.assert_allclose(data.forces[2], np.full((3, 3), 1.0))


def test_periodic_extxyz_preserves_cell_and_pbc(tmp_path):
    frames = periodic_frames()
    path = tmp_path / "periodic.xyz"
    ase.io.write(path, frames, format="extxyz")
    data = read_dataset(path)
    assert len(data) == 3
    for k, a in enumerate(frames):
        np.testing.assert_allclose(data.cells[k], a.cell[:], rtol=0, atol=1e-10)
        np.testing.assert_array_equal(data.pbc[k], a.pbc)
        np.testing.assert_allclose(data.positions[k], a.positions, atol=1e-8)
        np.testing.assert_allclose(data.forces[k], a.get_forces(), atol=1e-8)
        assert data.energy[k] == pytest.approx(a.get_potential_energy(), abs=1e-10)
        np.testing.assert_array_equal(data.numbers[k], [14, 8, 8])
    assert data.pbc[0].tolist() == [True, True, True]
    assert data.pbc[1].tolist() == [True, True, False]


def test_ase_trajectory_with_singlepoint_results(tmp_path):
    from ase.io.trajectory import Trajectory

    frames = periodic_frames(n=4, seed=5)
    path = tmp_path / "frames.traj"
    with Trajectory(path, "w") as traj:
        for a in frames:
            traj.write(a)
    data = read_dataset(path, energy_unit="meV")
    assert len(data) == 4
    for k, a in enumerate(frames):
        assert data.energy[k] == pytest.approx(a.get_potential_energy() * 1e-3, rel=1e-12)
        np.testing.assert_allclose(data.forces[k], a.get_forces() * 1e-3, rtol=1e-12)
        np.testing.assert_allclose(data.cells[k], a.cell[:], atol=1e-12)
        np.testing.assert_array_equal(data.pbc[k], a.pbc)
