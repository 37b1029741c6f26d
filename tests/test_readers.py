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


# --------------------------------------------------------------------------------------------
# 4. Charge, spin, dipole and per-atom partial charges
# --------------------------------------------------------------------------------------------


def charged_molecule(rng, charge, charges, **info) -> Atoms:
    """A 3-atom molecule with energy, forces, partial charges and a dipole as ASE's
    calculator results (extxyz writes the charges as a ``charge`` column, the dipole in the
    comment line) and ``info`` keys."""
    a = Atoms("OH2", positions=random_molecule(rng, 3))
    a.info.update(info)
    if charge is not None:
        a.info["charge"] = charge
    a.calc = SinglePointCalculator(a, energy=-10.0, forces=rng.normal(size=(3, 3)),
                                   dipole=rng.normal(size=3), charges=np.asarray(charges))
    return a


def test_extxyz_charge_spin_dipole_and_partial_charges(tmp_path):
    rng = np.random.default_rng(20)
    frames = [charged_molecule(rng, 0, [-0.8, 0.4, 0.4], spin=0),
              charged_molecule(rng, -1, [-1.2, 0.1, 0.1], spin=1),
              charged_molecule(rng, 1.0, [-0.2, 0.6, 0.6], spin=2.0)]
    path = tmp_path / "charged.extxyz"
    ase.io.write(path, frames, format="extxyz")
    header = path.read_text().splitlines()[1]
    # what ASE makes of it: a "charge" column (calculator result "charges"), the dipole in the
    # comment line (calculator result "dipole"), charge and spin as plain info keys
    assert ":charge:R:1" in header and "dipole=" in header and "charge=-1" in path.read_text()
    back = ase.io.read(path, index=1)
    assert set(back.calc.results) >= {"charges", "dipole"} and "charges" not in back.arrays
    assert back.info["charge"] == -1 and back.info["spin"] == 1

    data = read_dataset(path)
    np.testing.assert_array_equal(data.charge, [0.0, -1.0, 1.0])
    np.testing.assert_array_equal(data.spin, [0.0, 1.0, 2.0])
    assert data.charge.dtype == np.float64 and data.spin.dtype == np.float64
    assert data.has_dipole and data.has_charges
    for k, a in enumerate(frames):
        np.testing.assert_allclose(data.dipole[k], a.calc.results["dipole"], atol=1e-8)
        np.testing.assert_allclose(data.charges[k], a.calc.results["charges"], atol=1e-8)
    # the electronic state survives the round trip through to_atoms
    assert data.to_atoms(1).info == {"charge": -1.0, "spin": 1.0}


def test_extxyz_total_charge_and_multiplicity_keys(tmp_path):
    rng = np.random.default_rng(21)
    frames = []
    for q, mult in ((0, 1), (1, 2), (-2, 3)):
        a = Atoms("OH2", positions=random_molecule(rng, 3))
        a.info.update(total_charge=q, multiplicity=mult)
        a.calc = SinglePointCalculator(a, energy=-1.0, forces=np.zeros((3, 3)))
        frames.append(a)
    path = tmp_path / "mult.extxyz"
    ase.io.write(path, frames, format="extxyz")
    data = read_dataset(path)
    np.testing.assert_array_equal(data.charge, [0.0, 1.0, -2.0])
    np.testing.assert_array_equal(data.spin, [0.0, 1.0, 2.0])  # 2S = multiplicity - 1
    assert data.dipole is None and data.charges is None
    assert not data.has_dipole and not data.has_charges
    # a key named "multiplicity" is converted when given explicitly too
    np.testing.assert_array_equal(read_dataset(path, spin_key="multiplicity").spin, [0, 1, 2])


def test_defaults_fill_structures_without_charge_or_spin(tmp_path):
    rng = np.random.default_rng(22)
    frames = []
    for k in range(3):
        a = Atoms("OH2", positions=random_molecule(rng, 3))
        if k == 1:
            a.info.update(charge=1, spin=0)
        a.calc = SinglePointCalculator(a, energy=-1.0, forces=np.zeros((3, 3)))
        frames.append(a)
    path = tmp_path / "partial.extxyz"
    ase.io.write(path, frames, format="extxyz")
    data = read_dataset(path)
    np.testing.assert_array_equal(data.charge, [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(data.spin, [0.0, 0.0, 0.0])
    data = read_dataset(path, default_charge=-1, default_spin=1)
    np.testing.assert_array_equal(data.charge, [-1.0, 1.0, -1.0])
    np.testing.assert_array_equal(data.spin, [1.0, 0.0, 1.0])


def test_extxyz_custom_keys_and_bohr_dipole(tmp_path):
    rng = np.random.default_rng(23)
    frames = []
    for k in range(2):
        a = Atoms("OH2", positions=random_molecule(rng, 3))
        a.info.update(Q=-1.0, S=1.0, REF_dipole=np.array([1.0, -2.0, 0.5 * k]))
        a.arrays["REF_q"] = np.array([-0.5, -0.25, -0.25])
        a.arrays["REF_forces"] = np.ones((3, 3))
        a.info["REF_energy"] = -3.0
        frames.append(a)
    path = tmp_path / "custom_q.extxyz"
    ase.io.write(path, frames, format="extxyz")
    data = read_dataset(path, energy_key="REF_energy", forces_key="REF_forces", charge_key="Q",
                        spin_key="S", dipole_key="REF_dipole", charges_key="REF_q",
                        energy_unit="Hartree", length_unit="Bohr")
    np.testing.assert_array_equal(data.charge, [-1.0, -1.0])
    np.testing.assert_array_equal(data.spin, [1.0, 1.0])
    # dipoles in e Bohr -> e Å; partial charges in e are never scaled
    np.testing.assert_allclose(data.dipole[1], np.array([1.0, -2.0, 0.5]) * units.Bohr, rtol=1e-12)
    assert units.Bohr == pytest.approx(0.529177, rel=1e-5)
    np.testing.assert_array_equal(data.charges[0], [-0.5, -0.25, -0.25])
    np.testing.assert_allclose(data.forces[0], np.full((3, 3), units.Hartree / units.Bohr))


def test_initial_charges_are_read_only_when_named(tmp_path):
    rng = np.random.default_rng(24)
    a = Atoms("OH2", positions=random_molecule(rng, 3), charges=[-1.0, 0.0, 0.0])
    a.calc = SinglePointCalculator(a, energy=-1.0, forces=np.zeros((3, 3)))
    a.info["charge"] = -1
    path = tmp_path / "initial.extxyz"
    ase.io.write(path, [a], format="extxyz")
    assert ":initial_charges:R:1" in path.read_text()
    assert read_dataset(path).charges is None  # calculator inputs, not reference labels
    data = read_dataset(path, charges_key="initial_charges")
    np.testing.assert_array_equal(data.charges[0], [-1.0, 0.0, 0.0])


def test_ase_trajectory_charge_and_calculator_dipole(tmp_path):
    from ase.io.trajectory import Trajectory

    rng = np.random.default_rng(25)
    frames = [charged_molecule(rng, -1, [-0.6, -0.2, -0.2], multiplicity=2) for _ in range(2)]
    path = tmp_path / "charged.traj"
    with Trajectory(path, "w") as traj:
        for a in frames:
            traj.write(a)
    data = read_dataset(path, length_unit="nm")
    np.testing.assert_array_equal(data.charge, [-1.0, -1.0])
    np.testing.assert_array_equal(data.spin, [1.0, 1.0])
    for k, a in enumerate(frames):
        np.testing.assert_allclose(data.dipole[k], a.calc.results["dipole"] * 10.0, rtol=1e-12)
        np.testing.assert_array_equal(data.charges[k], a.calc.results["charges"])


def test_missing_dipole_and_charges_are_nan_with_mask(tmp_path):
    rng = np.random.default_rng(26)
    frames = [charged_molecule(rng, 0, [-0.8, 0.4, 0.4])]
    b = Atoms("OH2", positions=random_molecule(rng, 3))
    b.calc = SinglePointCalculator(b, energy=-1.0, forces=np.zeros((3, 3)))
    frames.append(b)
    path = tmp_path / "some_labels.extxyz"
    ase.io.write(path, frames, format="extxyz")
    data = read_dataset(path, nan_labels="mask")
    assert data.has_dipole and data.has_charges
    assert np.isfinite(data.dipole[0]).all() and np.isnan(data.dipole[1]).all()
    assert np.isfinite(data.charges[0]).all() and np.isnan(data.charges[1]).all()
    assert data.charges[1].shape == (3,)
    sub = data.subset([1])
    assert not sub.has_dipole and not sub.has_charges


def test_npz_sgdml_electronic_labels_in_bohr(tmp_path):
    path = tmp_path / "charged_sgdml.npz"
    rng = np.random.default_rng(27)
    dipole = rng.normal(size=(4, 3))
    charges = np.array([[-0.8, 0.4, 0.4], [-1.0, 0.0, 0.0], [-0.4, 0.2, 0.2], [0.0, 0.5, 0.5]])
    write_sgdml(path, n_struct=4, charge=np.array([0, -1, 0, 1]), spin=np.array([0, 1, 2, 1]),
                dipole=dipole, charges=charges)
    data = read_dataset(path, length_unit="Bohr")
    np.testing.assert_array_equal(data.charge, [0.0, -1.0, 0.0, 1.0])
    np.testing.assert_array_equal(data.spin, [0.0, 1.0, 2.0, 1.0])
    np.testing.assert_allclose(data.dipole, dipole * units.Bohr, rtol=1e-12)
    for k in range(4):
        np.testing.assert_array_equal(data.charges[k], charges[k])


def test_npz_total_charge_multiplicity_and_one_value_for_all(tmp_path):
    path = tmp_path / "alt.npz"
    write_sgdml(path, n_struct=3, total_charge=np.array([[1], [0], [-1]]),
                multiplicity=np.array([2, 1, 2]))
    data = read_dataset(path)
    np.testing.assert_array_equal(data.charge, [1.0, 0.0, -1.0])
    np.testing.assert_array_equal(data.spin, [1.0, 0.0, 1.0])
    path = tmp_path / "scalar.npz"
    write_sgdml(path, n_struct=3, charge=np.array(-1))
    np.testing.assert_array_equal(read_dataset(path).charge, [-1.0, -1.0, -1.0])
    # nothing in the file: the defaults
    path = tmp_path / "none.npz"
    write_sgdml(path, n_struct=2)
    data = read_dataset(path, default_charge=2.0, default_spin=1.0)
    np.testing.assert_array_equal(data.charge, [2.0, 2.0])
    np.testing.assert_array_equal(data.spin, [1.0, 1.0])
    assert data.dipole is None and data.charges is None


def test_mlff_npz_partial_charges_drop_padding(tmp_path):
    rng = np.random.default_rng(28)
    sizes = [3, 2]
    positions = np.zeros((2, 3, 3))
    numbers = np.zeros((2, 3), dtype=np.int64)
    charges = np.full((2, 3), np.nan)  # padding carries junk
    for k, n in enumerate(sizes):
        positions[k, :n] = random_molecule(rng, n)
        numbers[k, :n] = 1
        charges[k, :n] = 0.5 / n - 0.5 * k
    path = tmp_path / "mlff_q.npz"
    np.savez(path, positions=positions, atomic_numbers=numbers, energy=np.zeros(2),
             forces=np.zeros((2, 3, 3)), charge=np.array([0.5, -0.5]), charges=charges)
    data = read_dataset(path)
    assert [q.shape for q in data.charges] == [(3,), (2,)]
    np.testing.assert_allclose(data.charges[1], [-0.25, -0.25])
    np.testing.assert_array_equal(data.charge, [0.5, -0.5])


def test_charged_carbon_chain_real_file():
    path = shared_file("charged/ko2021_carbon_chain_4g.extxyz")
    data = read_dataset(path, charges_key="hirshfeld_charges")
    frames = ase.io.read(path, index=":")
    assert len(data) == 128
    # C10H2 (neutral, 12 atoms) and C10H3+ (total_charge=1, 13 atoms), read via total_charge
    assert sorted(set(data.charge.tolist())) == [0.0, 1.0]
    assert int((data.charge == 1).sum()) == 62 and int((data.charge == 0).sum()) == 66
    np.testing.assert_array_equal(data.n_atoms[data.charge == 1], 13)
    np.testing.assert_array_equal(data.n_atoms[data.charge == 0], 12)
    assert not data.spin.any() and data.dipole is None and data.has_charges
    for k in (0, 3, 127):
        assert data.charge[k] == frames[k].info["total_charge"]
        np.testing.assert_array_equal(data.charges[k], frames[k].arrays["hirshfeld_charges"])
    sums = np.array([q.sum() for q in data.charges])
    np.testing.assert_allclose(sums, data.charge, atol=1e-8)
    # without naming the per-atom key: the total charge only
    assert read_dataset(path).charges is None


def test_sn2_real_npz_has_no_charge_key():
    path = shared_file("efa/sn2_F_I.npz")
    with np.load(path) as raw:
        keys = set(raw.files)
    assert keys == {"positions", "atomic_numbers", "energy", "forces", "reaction_coordinate"}
    data = read_dataset(path, default_charge=-1)  # F- + CH3I
    assert len(data) == 401
    np.testing.assert_array_equal(data.charge, np.full(401, -1.0))
    np.testing.assert_array_equal(data.spin, np.zeros(401))
    assert data.dipole is None and data.charges is None


def test_training_config_keys_reach_the_reader(tmp_path):
    from so3krates.config import Config
    from so3krates.training.trainer import load_training_data

    rng = np.random.default_rng(29)
    a = Atoms("OH2", positions=random_molecule(rng, 3))
    a.info.update(Q=-1, multiplicity=2, my_dipole=np.array([0.0, 0.0, 1.0]))
    a.arrays["my_q"] = np.array([-0.6, -0.2, -0.2])
    a.calc = SinglePointCalculator(a, energy=-1.0, forces=np.zeros((3, 3)))
    path = tmp_path / "config_keys.extxyz"
    ase.io.write(path, [a], format="extxyz")
    config = Config.model_validate({"data": {
        "path": str(path), "charge_key": "Q", "spin_key": "multiplicity",
        "dipole_key": "my_dipole", "charges_key": "my_q", "length_unit": "nm"}})
    data = load_training_data(config)
    assert data.charge.tolist() == [-1.0] and data.spin.tolist() == [1.0]
    np.testing.assert_allclose(data.dipole[0], [0.0, 0.0, 10.0])
    np.testing.assert_allclose(data.charges[0], [-0.6, -0.2, -0.2])
    config = Config.model_validate({"data": {"path": str(path), "default_charge": -1,
                                             "default_spin": 1, "charges_key": "my_q"}})
    data = load_training_data(config)
    assert data.charge.tolist() == [-1.0] and data.spin.tolist() == [1.0]
