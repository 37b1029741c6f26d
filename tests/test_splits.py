"""Seeded train/valid/test splits: sizes, disjointness, reproducibility, files."""

from __future__ import annotations

import types

import numpy as np
import pytest
from ase import units

from reader_helpers import random_molecule
from so3krates.data import DataError, Dataset, read_dataset
from so3krates.data.split import SPLIT_FILE, load_split, make_split, save_split
from so3krates.training.statistics import fit_reference_energies


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
