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


# --------------------------------------------------------------------------------------------
# 5. Charge, spin, dipole and partial charges
# --------------------------------------------------------------------------------------------


def water(rng, **info) -> Atoms:
    a = Atoms("OH2", positions=random_molecule(rng, 3))
    a.info.update(info)
    a.calc = SinglePointCalculator(a, energy=-1.0, forces=np.zeros((3, 3)))
    return a


def write_frames(path, frames):
    ase.io.write(path, frames, format="extxyz")
    return path


@pytest.mark.parametrize("nan_labels", ["error", "mask"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_total_charge_is_an_error_even_with_mask(tmp_path, nan_labels, value):
    path = tmp_path / "nan_charge.npz"
    write_sgdml(path, n_struct=3, charge=np.array([0.0, value, 0.0]))
    with pytest.raises(DataError, match=r"nan_charge\.npz: structure 1: the total charge is "
                                        r"(nan|inf): it is an input of the model.*cannot be masked"):
        read_dataset(path, nan_labels=nan_labels)


def test_fractional_total_charge_is_allowed(tmp_path):
    path = tmp_path / "fractional.npz"
    write_sgdml(path, n_struct=2, charge=np.array([0.5, -0.25]))
    np.testing.assert_array_equal(read_dataset(path).charge, [0.5, -0.25])


def test_negative_spin(tmp_path):
    rng = np.random.default_rng(30)
    path = write_frames(tmp_path / "neg_spin.extxyz", [water(rng, spin=0), water(rng, spin=-1)])
    with pytest.raises(DataError, match=r"neg_spin\.extxyz: structure 1: spin -1 < 0 \(the spin "
                                        r"label is the number of unpaired electrons 2S"):
        read_dataset(path)


def test_multiplicity_below_one(tmp_path):
    rng = np.random.default_rng(31)
    path = write_frames(tmp_path / "mult0.extxyz",
                        [water(rng, multiplicity=1), water(rng, multiplicity=0)])
    with pytest.raises(DataError, match=r"mult0\.extxyz: structure 1: multiplicity 0 < 1"):
        read_dataset(path)
    path = tmp_path / "mult0.npz"
    write_sgdml(path, n_struct=3, multiplicity=np.array([1, 2, 0]))
    with pytest.raises(DataError, match=r"mult0\.npz: structure 2: multiplicity 0 < 1"):
        read_dataset(path)


def test_charge_and_total_charge_that_disagree(tmp_path):
    rng = np.random.default_rng(32)
    path = write_frames(tmp_path / "two_q.extxyz", [water(rng, charge=1, total_charge=0)])
    with pytest.raises(DataError, match=r"structure 0: the total charge labels disagree: "
                                        r"charge=1, total_charge=0"):
        read_dataset(path)


def test_non_numeric_total_charge(tmp_path):
    rng = np.random.default_rng(33)
    path = write_frames(tmp_path / "text_q.extxyz", [water(rng, charge="minus")])
    with pytest.raises(DataError, match=r"structure 0: total charge 'minus' is not a number"):
        read_dataset(path)


def test_dipole_with_two_numbers(tmp_path):
    rng = np.random.default_rng(34)
    path = write_frames(tmp_path / "dip2.extxyz",
                        [water(rng, dipole=np.array([0.0, 0.1, 0.2])),
                         water(rng, dipole=np.array([0.1, 0.2]))])
    with pytest.raises(DataError, match=re.escape("dip2.extxyz: structure 1: the dipole label "
                                                  "'dipole' has 2 number(s) ([0.1, 0.2]), expected 3")):
        read_dataset(path)
    path = tmp_path / "dip2.npz"
    write_sgdml(path, n_struct=4, dipole=np.zeros((4, 2)))
    with pytest.raises(DataError, match=re.escape("dipole has shape (4, 2), expected (4, 3)")):
        read_dataset(path)


def test_nan_dipole_follows_nan_labels(tmp_path):
    path = tmp_path / "nan_dipole.npz"
    dipole = np.zeros((3, 3))
    dipole[2] = np.nan
    write_sgdml(path, n_struct=3, dipole=dipole)
    with pytest.raises(DataError, match=r"structure 2: the dipole is \[nan, nan, nan\] "
                                        r"\(set data.nan_labels=mask"):
        read_dataset(path)
    data = read_dataset(path, nan_labels="mask")
    assert data.has_dipole and np.isnan(data.dipole[2]).all()


def test_partial_charges_of_the_wrong_length(tmp_path):
    path = tmp_path / "q_len.npz"
    write_sgdml(path, n_struct=2, n_atoms=3, charges=np.zeros((2, 4)))
    with pytest.raises(DataError, match=re.escape("charges has shape (2, 4), expected (2, 3): "
                                                  "one partial charge per atom")):
        read_dataset(path)
    write_sgdml(path, n_struct=2, n_atoms=3, charges=np.zeros(2))
    with pytest.raises(DataError, match="a total charge per structure belongs in data.charge_key"):
        read_dataset(path)
    # a Dataset built in memory is checked by validate with the structure's index
    from so3krates.data.dataset import Dataset, validate

    rng = np.random.default_rng(35)
    data = Dataset(numbers=[np.array([8, 1, 1])] * 2,
                   positions=[random_molecule(rng, 3) for _ in range(2)],
                   cells=np.zeros((2, 3, 3)), pbc=np.zeros((2, 3), bool), energy=np.zeros(2),
                   forces=[np.zeros((3, 3))] * 2, source="memory.xyz",
                   charges=[np.zeros(3), np.zeros(2)])
    with pytest.raises(DataError, match=re.escape("memory.xyz: structure 1: partial charges have "
                                                  "shape (2,), expected (3,) for 3 atoms")):
        validate(data)


def test_partial_charges_that_do_not_sum_to_the_total_charge(tmp_path):
    rng = np.random.default_rng(36)
    a = water(rng)  # an anion without its total charge: the default 0 is used
    a.arrays["q"] = np.array([-1.0, 0.0, 0.0])
    path = write_frames(tmp_path / "anion.extxyz", [water(rng), a])
    with pytest.raises(DataError, match=re.escape(
            "anion.extxyz: structure 1: the partial charges sum to -1 e but the total charge is "
            "0 e (difference -1 e, more than 0.01 e for 3 atoms): likely the wrong "
            "data.charges_key, or a missing total charge (data.charge_key, data.default_charge)")):
        read_dataset(path, charges_key="q", nan_labels="mask")
    # with the charge given, it reads
    assert read_dataset(path, charges_key="q", default_charge=-1, nan_labels="mask").charge[1] == -1


@pytest.mark.parametrize("n_atoms, off, ok", [(3, 0.009, True), (3, 0.011, False),
                                              (20, 0.019, True), (20, 0.021, False)])
def test_partial_charge_sum_tolerance(tmp_path, n_atoms, off, ok):
    path = tmp_path / "tol.npz"
    charges = np.zeros((1, n_atoms))
    charges[0, 0] = off
    write_sgdml(path, n_struct=1, n_atoms=n_atoms, charges=charges)
    if ok:
        assert read_dataset(path).has_charges
    else:
        with pytest.raises(DataError, match="the partial charges sum to"):
            read_dataset(path)


def test_nan_partial_charges_follow_nan_labels(tmp_path):
    path = tmp_path / "nan_q.npz"
    charges = np.zeros((3, 3))
    charges[1, 2] = np.nan
    write_sgdml(path, n_struct=3, charges=charges)
    with pytest.raises(DataError, match=r"structure 1: partial charges contain NaN or inf "
                                        r"\(set data.nan_labels=mask"):
        read_dataset(path)
    data = read_dataset(path, nan_labels="mask")  # a partly labelled structure: no sum check
    assert np.isnan(data.charges[1][2])


@pytest.mark.parametrize("option, key", [("charge_key", "Q"), ("spin_key", "S"),
                                         ("dipole_key", "REF_dipole"), ("charges_key", "REF_q")])
def test_named_key_found_nowhere(tmp_path, option, key):
    kind = option[:-4]
    path = tmp_path / "plain.npz"
    write_sgdml(path)
    with pytest.raises(DataError, match=rf"plain\.npz: no structure has the {kind} label "
                                        rf"'{key}' \(data\.{option}\); available keys: \['E', 'F'"):
        read_dataset(path, **{option: key})


@pytest.mark.parametrize("option, key", [("charge_key", "Q"), ("charges_key", "hirshfeld")])
def test_named_key_found_nowhere_real_file(option, key):
    kind = option[:-4]
    path = shared_file("charged/ko2021_carbon_chain_4g.extxyz")
    with pytest.raises(DataError, match=rf"no structure has the {kind} label '{key}'.*"
                                        r"'hirshfeld_charges'.*'total_charge'"):
        read_dataset(path, **{option: key})


def test_npz_charge_and_total_charge_that_disagree(tmp_path):
    path = tmp_path / "two_q.npz"
    write_sgdml(path, n_struct=3, charge=np.array([0, 1, 0]), total_charge=np.array([0, 1, 1]))
    with pytest.raises(DataError, match=r"two_q\.npz: structure 2: charge and total_charge "
                                        r"disagree \(charge: 0 and 1\)"):
        read_dataset(path)
    write_sgdml(path, n_struct=3, spin=np.array([0, 1, 2]), multiplicity=np.array([1, 2, 3]))
    np.testing.assert_array_equal(read_dataset(path).spin, [0, 1, 2])  # agree after conversion
