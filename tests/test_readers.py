"""Tests for reading reference data: npz layouts, ASE formats, units, errors, splits.

Small synthetic files are written to ``tmp_path``; the real reference data under
``/work/shared/data`` (``Path(__file__).parents[2] / "shared" / "data"``) is used where present
and the tests that need it are skipped otherwise.
"""

from __future__ import annotations

import re
import types
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from so3krates.data import DataError, Dataset, read_dataset
from so3krates.data.split import SPLIT_FILE, load_split, make_split, save_split
from so3krates.datasets import shipped_dataset_path
from so3krates.training.statistics import fit_reference_energies

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"
KCAL_MOL = units.kcal / units.mol
ETHANOL_Z = [6, 6, 8, 1, 1, 1, 1, 1, 1]


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"reference data {path} is not available (see /work/shared/data/README.md)")
    return path


def random_molecule(rng: np.random.Generator, n_atoms: int, spacing: float = 1.5) -> np.ndarray:
    """Positions on a jittered cubic grid: no two atoms closer than ``spacing - 0.4`` Å."""
    grid = np.array([(i, j, k) for i in range(4) for j in range(4) for k in range(4)], float)
    idx = rng.choice(len(grid), size=n_atoms, replace=False)
    return grid[idx] * spacing + rng.uniform(-0.2, 0.2, size=(n_atoms, 3))


def write_sgdml(path: Path, n_struct: int = 4, n_atoms: int = 3, seed: int = 0, **override):
    rng = np.random.default_rng(seed)
    arrays = {
        "R": np.stack([random_molecule(rng, n_atoms) for _ in range(n_struct)]),
        "z": np.array([8, 1, 1][:n_atoms] + [6] * max(0, n_atoms - 3)),
        "E": rng.normal(-1000.0, 5.0, size=(n_struct, 1)),
        "F": rng.normal(0.0, 10.0, size=(n_struct, n_atoms, 3)),
    }
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


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


def _periodic_frames(n: int = 3, seed: int = 4) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    cell = np.array([[5.0, 0.0, 0.0], [0.5, 6.0, 0.0], [0.3, 0.2, 7.0]])
    frames = []
    for k in range(n):
        frac = np.array([[0.1, 0.1, 0.1], [0.5, 0.5, 0.5], [0.2, 0.7, 0.4]])
        frac += rng.uniform(-0.02, 0.02, size=frac.shape)
        a = Atoms("SiO2", scaled_positions=frac, cell=cell, pbc=[True, True, k % 2 == 0])
        a.calc = SinglePointCalculator(
            a, energy=-20.0 + 0.1 * k, forces=rng.normal(size=(3, 3))
        )
        frames.append(a)
    return frames


def test_periodic_extxyz_preserves_cell_and_pbc(tmp_path):
    frames = _periodic_frames()
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

    frames = _periodic_frames(n=4, seed=5)
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
# 4. Clear errors
# --------------------------------------------------------------------------------------------


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_missing_forces_key_in_npz(tmp_path):
    path = tmp_path / "no_F.npz"
    write_sgdml(path, F=None)
    with pytest.raises(DataError, match=r"missing key\(s\) \['F'\].*has keys \['E', 'R', 'z'\]"):
        read_dataset(path)


def test_missing_key_in_mlff_npz(tmp_path):
    path = tmp_path / "mlff_no_energy.npz"
    np.savez(path, positions=np.zeros((1, 1, 3)), atomic_numbers=np.ones(1), forces=np.zeros((1, 1, 3)))
    with pytest.raises(DataError, match=r"missing key\(s\) \['energy'\]"):
        read_dataset(path)


def test_wrong_energy_key_lists_available_keys():
    path = shared_file("md17_ethanol_100_refkeys.xyz")
    with pytest.raises(DataError, match=r"no energy label 'energy'; available keys: \[.*'REF_energy'"):
        read_dataset(path)  # default energy_key="energy"


def test_wrong_energy_key_synthetic_extxyz(tmp_path):
    frames = _periodic_frames(n=2)
    path = tmp_path / "p.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(DataError, match=r"no energy label 'total_energy'.*available keys: \[.*'energy'"):
        read_dataset(path, energy_key="total_energy")
    with pytest.raises(DataError, match=r"no forces label 'REF_forces'.*available keys: \[.*'forces'"):
        read_dataset(path, forces_key="REF_forces")


def test_nan_energy_is_an_error_by_default(tmp_path):
    path = tmp_path / "nan_E.npz"
    write_sgdml(path, n_struct=4, E=np.array([-1.0, np.nan, -3.0, -4.0]))
    with pytest.raises(DataError, match=r"1 energies are NaN or inf \(first: structure 1\)"):
        read_dataset(path)


def test_nan_forces_is_an_error_by_default(tmp_path):
    path = tmp_path / "nan_F.npz"
    F = np.zeros((4, 3, 3))
    F[2, 1, 0] = np.nan
    write_sgdml(path, n_struct=4, F=F)
    with pytest.raises(DataError, match=r"structure 2: forces contain NaN"):
        read_dataset(path)


def test_nan_positions_is_an_error(tmp_path):
    path = tmp_path / "nan_R.npz"
    rng = np.random.default_rng(0)
    R = np.stack([random_molecule(rng, 3) for _ in range(4)])
    R[3, 0, 2] = np.nan
    write_sgdml(path, n_struct=4, R=R)
    with pytest.raises(DataError, match=r"structure 3: positions contain NaN"):
        read_dataset(path)
    # positions are never maskable
    with pytest.raises(DataError, match=r"structure 3: positions contain NaN"):
        read_dataset(path, nan_labels="mask")


@pytest.mark.parametrize("suffix", [".npz", ".xyz", ".extxyz", ".traj"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_dataset(path)


def test_blank_xyz_file(tmp_path):
    path = tmp_path / "blank.xyz"
    path.write_text("\n\n")
    with pytest.raises(DataError, match="no structures found"):
        read_dataset(path)


def test_missing_file(tmp_path):
    path = tmp_path / "does_not_exist.xyz"
    with pytest.raises(DataError, match=r"does_not_exist\.xyz: no such file"):
        read_dataset(path)


def test_corrupt_npz(tmp_path):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match=r"not a readable \.npz file"):
        read_dataset(path)


def test_forces_with_wrong_atom_count(tmp_path):
    path = tmp_path / "bad_F.npz"
    write_sgdml(path, n_struct=4, n_atoms=3, F=np.zeros((4, 4, 3)))
    with pytest.raises(DataError, match=re.escape("forces have shape (4, 4, 3), positions (4, 3, 3)")):
        read_dataset(path)


def test_energy_with_wrong_length(tmp_path):
    path = tmp_path / "bad_E.npz"
    write_sgdml(path, n_struct=4, E=np.zeros(5))
    with pytest.raises(DataError, match=r"5 energies for 4 structures"):
        read_dataset(path)


def test_z_with_wrong_length(tmp_path):
    path = tmp_path / "bad_z.npz"
    write_sgdml(path, n_struct=2, n_atoms=3, z=np.array([1, 1]))
    with pytest.raises(DataError, match=re.escape("z has shape (2,), expected (3,)")):
        read_dataset(path)


def test_overlapping_atoms(tmp_path):
    rng = np.random.default_rng(0)
    R = np.stack([random_molecule(rng, 3) for _ in range(3)])
    R[1, 2] = R[1, 0]  # atoms 0 and 2 of structure 1 at the same position
    path = tmp_path / "overlap.npz"
    write_sgdml(path, n_struct=3, R=R)
    with pytest.raises(DataError, match=r"structure 1: atoms (0 and 2|2 and 0) overlap"):
        read_dataset(path)


def test_overlapping_atoms_in_extxyz(tmp_path):
    a = Atoms("H2O", positions=[[0, 0, 0], [0.05, 0, 0], [1.0, 0.0, 0.0]])
    a.calc = SinglePointCalculator(a, energy=-1.0, forces=np.zeros((3, 3)))
    path = tmp_path / "overlap.xyz"
    ase.io.write(path, [a], format="extxyz")
    with pytest.raises(DataError, match=r"structure 0: atoms (0 and 1|1 and 0) overlap"):
        read_dataset(path)


def test_atoms_overlapping_through_periodic_image(tmp_path):
    # atom 1 sits 0.04 Å from atom 0's image across the periodic boundary
    a = Atoms("H2", positions=[[0.02, 1.0, 1.0], [3.98, 1.0, 1.0]], cell=[4.0, 4.0, 4.0], pbc=True)
    a.calc = SinglePointCalculator(a, energy=-1.0, forces=np.zeros((2, 3)))
    path = tmp_path / "overlap_pbc.xyz"
    ase.io.write(path, [a], format="extxyz")
    with pytest.raises(DataError, match="overlap"):
        read_dataset(path)
    # the same molecule without periodicity is fine (atoms 3.96 Å apart)
    a.pbc = False
    ase.io.write(path, [a], format="extxyz")
    assert len(read_dataset(path)) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"energy_unit": "kcal"}, r"unknown energy unit 'kcal'; known units: .*kcal/mol"),
        ({"length_unit": "pm"}, r"unknown length unit 'pm'; known units: .*Angstrom"),
    ],
)
def test_unknown_units(tmp_path, kwargs, match):
    path = tmp_path / "ok.npz"
    write_sgdml(path)
    with pytest.raises(ValueError, match=match):
        read_dataset(path, **kwargs)


def test_invalid_nan_labels_option(tmp_path):
    path = tmp_path / "ok.npz"
    write_sgdml(path)
    with pytest.raises(DataError, match="nan_labels must be 'error' or 'mask'"):
        read_dataset(path, nan_labels="ignore")


def test_nan_labels_mask_keeps_nan(tmp_path):
    E = np.array([-1.0, np.nan, -3.0, -4.0])
    F = np.ones((4, 3, 3))
    F[2, 0, :] = np.nan
    path = tmp_path / "nan_mask.npz"
    write_sgdml(path, n_struct=4, E=E, F=F)
    data = read_dataset(path, nan_labels="mask", energy_unit="kcal/mol")
    assert len(data) == 4
    assert np.isnan(data.energy[1])
    np.testing.assert_allclose(data.energy[[0, 2, 3]], E[[0, 2, 3]] * KCAL_MOL, rtol=1e-12)
    assert np.isnan(data.forces[2][0]).all()
    assert np.isfinite(data.forces[2][1:]).all()
    np.testing.assert_allclose(data.forces[1], np.full((3, 3), KCAL_MOL))


def test_nan_labels_mask_still_needs_some_label(tmp_path):
    path = tmp_path / "all_nan.npz"
    write_sgdml(path, n_struct=2, E=np.full(2, np.nan), F=np.full((2, 3, 3), np.nan))
    with pytest.raises(DataError, match="no finite energy or force label at all"):
        read_dataset(path, nan_labels="mask")


# --------------------------------------------------------------------------------------------
# 5. Splits
# --------------------------------------------------------------------------------------------


def test_make_split_sizes_and_disjoint():
    split = make_split(100, 70, 20, None, seed=0)
    assert {k: len(v) for k, v in split.items()} == {"train": 70, "valid": 20, "test": 10}
    tr, va, te = (set(split[k].tolist()) for k in ("train", "valid", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert tr | va | te == set(range(100))

    split = make_split(100, 30, 10, 25, seed=1)
    assert {k: len(v) for k, v in split.items()} == {"train": 30, "valid": 10, "test": 25}
    all_idx = np.concatenate(list(split.values()))
    assert len(np.unique(all_idx)) == 65
    assert all_idx.min() >= 0 and all_idx.max() < 100


def test_make_split_reproducible_and_seed_dependent():
    a = make_split(500, 300, 100, None, seed=42)
    b = make_split(500, 300, 100, None, seed=42)
    c = make_split(500, 300, 100, None, seed=43)
    for k in ("train", "valid", "test"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["train"], c["train"])


def test_make_split_unshuffled_is_in_order():
    split = make_split(10, 5, 3, None, seed=0, shuffle=False)
    np.testing.assert_array_equal(split["train"], np.arange(5))
    np.testing.assert_array_equal(split["valid"], [5, 6, 7])
    np.testing.assert_array_equal(split["test"], [8, 9])


def test_save_load_split_roundtrip(tmp_path):
    split = make_split(50, 30, 10, 10, seed=7)
    save_split(tmp_path, split, n_total=50)
    assert (tmp_path / SPLIT_FILE).is_file()
    loaded = load_split(tmp_path, n_total=50)
    assert set(loaded) == {"train", "valid", "test"}
    for k in split:
        np.testing.assert_array_equal(loaded[k], split[k])
        assert loaded[k].dtype == np.int64
    loaded_unchecked = load_split(tmp_path)
    np.testing.assert_array_equal(loaded_unchecked["test"], split["test"])


def test_load_split_wrong_n_total(tmp_path):
    save_split(tmp_path, make_split(50, 30, 10, 10, seed=7), n_total=50)
    with pytest.raises(DataError, match="made for a dataset of 50 structures, this one has 49"):
        load_split(tmp_path, n_total=49)


def test_load_split_missing(tmp_path):
    with pytest.raises(DataError, match="no split saved"):
        load_split(tmp_path)


@pytest.mark.parametrize(
    "n_total, n_train, n_valid, n_test",
    [(10, 8, 3, None), (10, 5, 3, 5), (10, 11, 0, 0), (100, 60, 30, 11)],
)
def test_make_split_too_large(n_total, n_train, n_valid, n_test):
    with pytest.raises(DataError, match=rf"but the data has only {n_total}"):
        make_split(n_total, n_train, n_valid, n_test, seed=0)


# --------------------------------------------------------------------------------------------
# 6. Per-element reference energies
# --------------------------------------------------------------------------------------------


def _composition_dataset(e_ref: dict[int, float], n_struct: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    elements = np.array(sorted(e_ref))
    numbers, positions, forces, energy = [], [], [], []
    for _ in range(n_struct):
        n = int(rng.integers(2, 12))
        z = rng.choice(elements, size=n)
        numbers.append(z.astype(np.int64))
        positions.append(random_molecule(rng, n))
        forces.append(np.zeros((n, 3)))
        energy.append(sum(e_ref[int(v)] for v in z))
    return Dataset(
        numbers=numbers,
        positions=positions,
        cells=np.zeros((n_struct, 3, 3)),
        pbc=np.zeros((n_struct, 3), dtype=bool),
        energy=np.asarray(energy, dtype=np.float64),
        forces=forces,
    )


def test_fit_reference_energies_exact():
    e_ref = {1: -13.6057, 6: -1029.4321, 8: -2041.1234}
    data = _composition_dataset(e_ref, n_struct=60, seed=11)
    fitted = fit_reference_energies(data)
    assert set(fitted) == {1, 6, 8}
    for z, e in e_ref.items():
        assert abs(fitted[z] - e) < 1e-8, (z, fitted[z], e)
        assert isinstance(fitted[z], float)


def test_fit_reference_energies_through_reader_and_ignoring_nan(tmp_path):
    e_ref = {1: -0.5, 7: -54.6, 8: -75.1, 6: -37.8}
    data = _composition_dataset(e_ref, n_struct=40, seed=12)
    # write as a padded mlff npz (energies in Hartree), with a few NaN energies
    n_max = int(data.n_atoms.max())
    S = len(data)
    R = np.zeros((S, n_max, 3))
    Z = np.zeros((S, n_max), dtype=np.int64)
    F = np.zeros((S, n_max, 3))
    for k in range(S):
        n = data.n_atoms[k]
        R[k, :n], Z[k, :n] = data.positions[k], data.numbers[k]
    E = data.energy / units.Hartree
    E[[3, 17]] = np.nan
    path = tmp_path / "comp.npz"
    np.savez(path, positions=R, atomic_numbers=Z, energy=E, forces=F)
    read = read_dataset(path, energy_unit="Hartree", nan_labels="mask")
    fitted = fit_reference_energies(read)
    for z, e in e_ref.items():
        assert abs(fitted[z] - e) < 1e-8, (z, fitted[z], e)


# --------------------------------------------------------------------------------------------
# 7. Elements the model never saw
# --------------------------------------------------------------------------------------------


def test_check_elements_rejects_unknown_element():
    from so3krates.model_io import Model

    fake = types.SimpleNamespace(reference_energies={1: 0.0, 6: 0.0}, elements=[1, 6])
    Model.check_elements(fake, np.array([1, 6, 6, 1]))  # known elements: no error
    with pytest.raises(ValueError, match=r"elements \[8\] were never seen in training.*\[1, 6\]"):
        Model.check_elements(fake, np.array([6, 1, 8, 1]))
    with pytest.raises(ValueError, match=r"elements \[7, 8\] were never seen"):
        Model.check_elements(fake, np.array([8, 7, 1]))


def test_evaluate_model_rejects_unknown_element_before_predicting():
    from so3krates.evaluate import evaluate_model
    from so3krates.model_io import Model

    fake = types.SimpleNamespace(reference_energies={1: 0.0, 6: 0.0}, elements=[1, 6])
    fake.check_elements = lambda zs: Model.check_elements(fake, zs)
    data = _composition_dataset({1: 0.0, 6: 0.0, 8: 0.0}, n_struct=5, seed=3)
    assert 8 in data.elements
    with pytest.raises(ValueError, match=r"elements \[8\] were never seen"):
        evaluate_model(fake, data)
