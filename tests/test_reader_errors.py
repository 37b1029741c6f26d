"""Bad input to the readers gives a clear ``DataError`` (a ``ValueError``) naming the problem:
missing keys, NaN labels, empty or corrupt files, mismatched shapes, overlapping atoms,
unknown units; and the ``nan_labels="mask"`` option."""

from __future__ import annotations

import re

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from reader_helpers import KCAL_MOL, periodic_frames, random_molecule, shared_file, write_sgdml
from so3krates.data import DataError, read_dataset


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
    frames = periodic_frames(n=2)
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
