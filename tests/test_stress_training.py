"""Stress labels: reading (stress or virial, units, layouts), clear errors, the loss term, and
training on a mixed dataset of molecules (no stress) and crystals (stress)."""

from __future__ import annotations

import ase.io
import jax.numpy as jnp
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from conftest import TINY_PERIODIC_TRAIN
from so3krates.batching import Labels
from so3krates.data import DataError, read_dataset
from so3krates.datasets import shipped_dataset_path
from so3krates.potential import Prediction

KCAL = 0.0433641043  # eV per kcal/mol


def cu_frames(n: int | None = None, max_atoms: int = 40):
    frames = [a for a in ase.io.read(shipped_dataset_path("cu_emt"), ":") if len(a) <= max_atoms]
    return frames[:n] if n else frames


def test_reads_shipped_stress_and_converts_units(tmp_path):
    data = read_dataset(shipped_dataset_path("cu_emt"))
    assert data.stress.shape == (len(data), 3, 3) and data.has_stress
    frames = ase.io.read(shipped_dataset_path("cu_emt"), ":")
    np.testing.assert_allclose(data.stress[7], frames[7].get_stress(voigt=False), rtol=1e-12)
    # kcal/mol and nm: stress scales as energy / length^3.
    path = tmp_path / "units.extxyz"
    scaled = []
    for a in frames[:3]:
        b = a.copy()
        b.positions /= 10.0
        b.cell = a.cell[:] / 10.0
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy() / KCAL,
                                       forces=a.get_forces() / KCAL * 10.0,
                                       stress=a.get_stress() / KCAL * 1000.0)
        scaled.append(b)
    ase.io.write(path, scaled, format="extxyz")
    back = read_dataset(path, energy_unit="kcal/mol", length_unit="nm")
    np.testing.assert_allclose(back.stress, data.stress[:3], rtol=1e-8, atol=1e-12)


def test_virial_and_voigt_labels_in_info(tmp_path):
    frames = cu_frames(4)
    for k, a in enumerate(frames):
        sigma = a.get_stress(voigt=False)
        a.info["energy"], a.arrays["forces"] = a.get_potential_energy(), a.get_forces()
        if k % 2:
            a.info["virial"] = -sigma * a.get_volume()  # extensive, compression positive
        else:
            a.info["my_stress"] = a.get_stress()  # Voigt, ASE order
        a.calc = None
    path = tmp_path / "virial.extxyz"
    ase.io.write(path, frames, format="extxyz")
    data = read_dataset(path, stress_key="my_stress")
    ref = np.stack([a.info.get("my_stress") is not None for a in frames])
    assert ref.sum() == 2
    for k, a in enumerate(ase.io.read(path, ":")):
        expected = cu_frames(4)[k].get_stress(voigt=False)
        np.testing.assert_allclose(data.stress[k], expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case, message", [
    ("molecule", "not periodic"),
    ("partial", "partly NaN"),
    ("asymmetric", "not symmetric"),
])
def test_bad_stress_labels_are_clear_errors(tmp_path, case, message):
    frames = cu_frames(2)
    a = frames[0]
    sigma = a.get_stress(voigt=False)
    if case == "molecule":
        a.pbc = False
    elif case == "partial":
        sigma[0, 1] = sigma[1, 0] = np.nan
    else:
        sigma[0, 1] += 0.01
    a.info["stress9"] = sigma.reshape(9)
    path = tmp_path / "bad.extxyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(DataError, match=message):
        read_dataset(path, stress_key="stress9")


def test_stress_loss_term_matches_the_validation_loss():
    from so3krates.config import TrainingConfig
    from so3krates.training.loss import energy_forces_loss, errors_loss

    cfg = TrainingConfig(loss="huber", huber_delta=0.05, energy_weight=0.3, forces_weight=0.7,
                         stress_weight=50.0)
    rng = np.random.default_rng(3)
    e_err, f_err = rng.normal(scale=0.1, size=3), rng.normal(scale=0.1, size=(4, 3))
    s_err = rng.normal(scale=0.02, size=(3, 3, 3))
    s_mask = np.ones((3, 3, 3), bool)
    s_mask[1] = False  # a molecule: no stress label
    pred = Prediction(jnp.asarray(e_err), jnp.asarray(f_err), jnp.zeros(4),
                      stress=jnp.asarray(np.where(s_mask, s_err, 123.0)))
    labels = Labels(jnp.zeros(3), jnp.zeros((4, 3)), jnp.ones(3, bool), jnp.ones((4, 3), bool),
                    stress=jnp.zeros((3, 3, 3)), stress_mask=jnp.asarray(s_mask))
    train, parts = energy_forces_loss(pred, labels, 0.3, 0.7, 0.05, 50.0)
    no_stress, _ = energy_forces_loss(pred, labels, 0.3, 0.7, 0.05, 0.0)
    assert float(train - no_stress) == pytest.approx(50.0 * float(parts["stress_loss"]), rel=1e-12)
    assert abs(float(train) - errors_loss(e_err, f_err, cfg, s_err[s_mask])) < 1e-12 * float(train)


@pytest.mark.slow
def test_mixed_molecules_and_crystals_train_with_stress_masked(tmp_path):
    from so3krates.config import load_config
    from so3krates.evaluate import evaluate_model
    from so3krates.model_io import load_model
    from so3krates.training.trainer import train

    molecules = read_dataset(shipped_dataset_path())
    frames = []
    for k in range(60):
        a = molecules.to_atoms(k)
        a.calc = SinglePointCalculator(a, energy=molecules.energy[k], forces=molecules.forces[k])
        frames.append(a)
    crystals = cu_frames(max_atoms=32)
    frames += crystals
    rng = np.random.default_rng(0)
    rng.shuffle(frames)
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, frames, format="extxyz")
    data = read_dataset(path)
    labelled = np.isfinite(data.stress).all(axis=(1, 2))
    assert labelled.sum() == len(crystals) and (~labelled).sum() == 60

    cfg = load_config(None, [f"data.path={path}", f"data.n_train={len(frames) - 60}",
                             "data.n_valid=30", "data.n_test=30", *TINY_PERIODIC_TRAIN])
    out = tmp_path / "model"
    train(cfg, out)
    model = load_model(out)
    test = read_dataset(path).subset(np.load(out / "split.npz")["test"])
    assert test.has_stress
    metrics, _, _, stress = evaluate_model(model, test)
    ok = np.isfinite(test.stress)
    baseline = np.mean(np.abs(test.stress[ok]))  # predicting zero stress
    assert np.isfinite(stress).all()
    assert metrics["stress_mae"] < 0.5 * baseline, (metrics["stress_mae"], baseline)
    assert "valid_stress_mae" in (out / "metrics.csv").read_text().splitlines()[0]
