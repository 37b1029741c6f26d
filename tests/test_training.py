"""Training: loss masking, buckets, learning, exact resume after kill -9, CLI, atomic writes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from fault_helpers import FullDisk
from flax import serialization

from conftest import TINY_TRAIN
from so3krates.batching import GraphDataset, Labels
from so3krates.data import Dataset
from so3krates.datasets import shipped_dataset_path
from so3krates.fileio import atomic_write_bytes
from so3krates.potential import Prediction
from so3krates.training.loss import energy_forces_loss, huber


def read_metrics(path: Path) -> list[dict]:
    with open(path) as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def test_loss_masks_nan_and_padding():
    pred = Prediction(energy=jnp.array([1.0, 2.0, 5.0]), forces=jnp.ones((4, 3)),
                      atomic_energies=jnp.zeros(4))
    labels = Labels(
        energy=jnp.array([0.0, 0.0, 0.0]),
        forces=jnp.zeros((4, 3)),
        energy_mask=jnp.array([True, False, False]),
        forces_mask=jnp.array([[True] * 3, [True] * 3, [False] * 3, [False] * 3]),
    )
    loss, parts = energy_forces_loss(pred, labels, 0.5, 2.0)
    assert float(parts["energy_loss"]) == 1.0  # only structure 0 counts
    assert float(parts["forces_loss"]) == 1.0
    assert float(loss) == 0.5 * 1.0 + 2.0 * 1.0


def test_huber_loss_is_mse_for_small_errors_and_linear_beyond_delta():
    import jax

    delta = 0.01
    small = np.array([-0.009, 0.0, 0.004, 0.0099])
    np.testing.assert_allclose(np.asarray(huber(small, delta)), small**2, rtol=1e-12)
    big = np.array([0.02, 0.5, -3.0])
    np.testing.assert_allclose(np.asarray(huber(2 * big, delta) - huber(big, delta)),
                               2 * delta * np.abs(big), rtol=1e-12)
    slope = jax.grad(lambda e: huber(e, delta))
    for edge in (delta, -delta):  # value and slope continuous at |err| = delta
        below, above = edge * (1 - 1e-9), edge * (1 + 1e-9)
        assert abs(float(huber(below, delta)) - float(huber(above, delta))) < 1e-12
        assert abs(float(slope(below)) - float(slope(above))) < 1e-9
    assert abs(float(slope(-3.0))) == 2 * delta  # beyond delta: bounded gradient


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_validation_loss_is_the_training_loss(loss):
    from so3krates.config import TrainingConfig
    from so3krates.training.loss import errors_loss, huber_delta

    cfg = TrainingConfig(loss=loss, huber_delta=0.05, energy_weight=0.3, forces_weight=0.7)
    rng = np.random.default_rng(1)
    e_err, f_err = rng.normal(scale=0.1, size=3), rng.normal(scale=0.1, size=(4, 3))
    e_err[1], f_err[2] = np.nan, np.nan  # NaN labels are skipped by both
    pred = Prediction(energy=jnp.asarray(np.nan_to_num(e_err)), forces=jnp.asarray(np.nan_to_num(f_err)),
                      atomic_energies=jnp.zeros(4))
    labels = Labels(energy=jnp.zeros(3), forces=jnp.zeros((4, 3)),
                    energy_mask=jnp.asarray(np.isfinite(e_err)), forces_mask=jnp.asarray(np.isfinite(f_err)))
    train, _ = energy_forces_loss(pred, labels, 0.3, 0.7, huber_delta(cfg))
    finite = [a[np.isfinite(a)] for a in (e_err, f_err)]  # as evaluate.label_errors gives them
    assert abs(float(train) - errors_loss(*finite, cfg)) < 1e-12 * float(train)


def test_nan_predictions_are_not_skipped_like_nan_labels():
    from so3krates.evaluate import error_metrics, label_errors

    forces = [np.zeros((2, 3)), np.ones((3, 3))]
    data = Dataset(numbers=[np.array([1, 1]), np.array([6, 1, 1])],
                   positions=[np.zeros((2, 3)), np.zeros((3, 3))], cells=np.zeros((2, 3, 3)),
                   pbc=np.zeros((2, 3), bool), energy=np.array([1.0, np.nan]), forces=forces)
    data.forces[1][0, 0] = np.nan  # a missing label: left out
    pred_f = [np.full((2, 3), 0.5), np.ones((3, 3))]
    de, df, ds = label_errors(data, np.array([1.5, 7.0]), pred_f)
    assert de.tolist() == [0.5] and df.size == 14 and np.isfinite(df).all() and ds.size == 0
    m = error_metrics(data, np.array([1.5, 7.0]), pred_f)
    assert m["forces_mae"] == 6 * 0.5 / 14 and m["energy_mae"] == 0.5
    assert m["forces_max_error"] == 0.5 and m["energy_max_error"] == 0.5
    pred_f[1][2, 1] = np.nan  # a diverged model: every force metric says so
    m = error_metrics(data, np.array([1.5, 7.0]), pred_f)
    assert np.isnan(m["forces_mae"]) and np.isnan(m["forces_max_error"])
    assert np.isnan(error_metrics(data, np.array([np.nan, 7.0]), pred_f)["energy_mae"])


def test_variable_sizes_use_few_shapes():
    rng = np.random.default_rng(0)
    sizes = rng.integers(3, 40, size=60)
    pos = [rng.uniform(0, 2.0 * n ** (1 / 3), size=(n, 3)) for n in sizes]
    data = Dataset(numbers=[np.full(n, 6) for n in sizes], positions=pos,
                   cells=np.zeros((60, 3, 3)), pbc=np.zeros((60, 3), bool),
                   energy=np.zeros(60), forces=[np.zeros((n, 3)) for n in sizes])
    graphs = GraphDataset(data, cutoff=4.0, batch_size=5, n_buckets=3)
    shapes = set()
    for epoch in range(5):
        order = np.random.default_rng(epoch).permutation(60)
        for graph, labels in graphs.batches(order):
            shapes.add((graph.positions.shape, graph.centers.shape))
            assert labels.forces_mask.sum() == 3 * graph.atom_mask.sum()
    assert len(shapes) <= 3


def test_training_lowers_validation_loss(trained_model_dir):
    rows = read_metrics(trained_model_dir / "metrics.csv")
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 600
    assert rows[-1]["valid_loss"] < 0.5 * rows[0]["valid_loss"]
    for name in ("learning_curves.png", "parity_valid.png"):
        assert (trained_model_dir / "plots" / name).stat().st_size > 1000


def run_cli(*args, env_extra=None, check=True):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "so3krates.cli", *args], capture_output=True,
                          text=True, env=env, check=check)


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    args = ["train", "--data", str(shipped_dataset_path()),
            *[a for s in TINY_TRAIN for a in ("--set", s)],
            "--set", "training.max_steps=40", "--set", "training.valid_every=10",
            "--set", "training.decay_steps=budget",
            "--set", "training.learning_rate=1e-3", "--set", "training.decay_rate=0.1",
            "--set", "training.weight_decay=0.01"]  # its (empty) optimiser state is checkpointed too
    full, broken = tmp_path / "full", tmp_path / "broken"
    run_cli(*args, "--output", str(full))
    killed = run_cli(*args, "--output", str(broken), env_extra={"SO3KRATES_KILL_AT_STEP": "25"},
                     check=False)
    assert killed.returncode == -9, killed.stderr  # really killed mid-epoch (15 batches/epoch)
    assert max(r["step"] for r in read_metrics(broken / "metrics.csv")) == 20
    resumed = run_cli(*args, "--output", str(broken))
    assert "resuming from step 20" in resumed.stdout

    a = serialization.msgpack_restore((full / "params.msgpack").read_bytes())
    b = serialization.msgpack_restore((broken / "params.msgpack").read_bytes())
    for x, y in zip(jax_leaves(a), jax_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    ma, mb = read_metrics(full / "metrics.csv"), read_metrics(broken / "metrics.csv")
    assert [r["step"] for r in ma] == [r["step"] for r in mb]
    # decay_steps: budget decays over the run's step limit: lr * decay_rate at the last step.
    assert ma[0]["learning_rate"] == pytest.approx(1e-3, rel=1e-6)
    assert ma[-1]["learning_rate"] == pytest.approx(1e-3 * 0.1, rel=1e-5)
    assert mb[-1]["learning_rate"] == pytest.approx(ma[-1]["learning_rate"], rel=1e-6)
    for ra, rb in zip(ma, mb):
        for key in ("train_loss", "valid_loss", "valid_forces_mae"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, nan_ok=True)

    # The CLI evaluates the model on its held-out test split.
    out = run_cli("evaluate", str(full), "--json", str(tmp_path / "eval.json"))
    metrics = json.loads((tmp_path / "eval.json").read_text())
    for key in ("energy_mae", "energy_rmse", "energy_mae_per_atom", "forces_mae", "forces_rmse"):
        assert np.isfinite(metrics[key]) and metrics[key] > 0
    assert metrics["forces_max_error"] >= metrics["forces_rmse"] >= metrics["forces_mae"]
    assert metrics["n_structures"] == 40 and metrics["split"] == "test"
    assert (tmp_path / "eval.png").exists() and "forces_mae" in out.stdout

    # Resuming into a directory with a different configuration is refused.
    bad = run_cli(*args, "--output", str(full), "--set", "model.features=8", check=False)
    assert bad.returncode == 2 and "model.features" in bad.stdout


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_cli_bad_input_is_a_clear_error(tmp_path):
    missing = run_cli("train", "--data", str(tmp_path / "nope.xyz"), "--output", str(tmp_path / "m"),
                      check=False)
    assert missing.returncode == 2 and "no such file" in missing.stdout
    assert "Traceback" not in missing.stdout + missing.stderr
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    res = run_cli("train", "--data", str(empty), "--output", str(tmp_path / "m2"), check=False)
    assert res.returncode == 2 and "empty" in res.stdout


def test_atomic_write_keeps_old_file_on_full_disk(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.msgpack"
    atomic_write_bytes(target, b"old content")

    monkeypatch.setattr("so3krates.fileio.os.fdopen", FullDisk)
    with pytest.raises(OSError, match="could not write .*ckpt.msgpack"):
        atomic_write_bytes(target, b"new content that does not fit")
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.msgpack"]


def test_plateau_halves_learning_rate_and_early_stopping_stops(tmp_path):
    """A learning rate far too large never beats the step-0 baseline: every validation is
    'bad', so each one halves the rate (patience 1) and the third stops training."""
    from so3krates.config import load_config
    from so3krates.training.trainer import train

    cfg = load_config(None, [
        f"data.path={shipped_dataset_path()}", *TINY_TRAIN,
        "training.learning_rate=50.0", "training.schedule=constant", "training.grad_clip=null",
        "training.valid_every=5", "training.divergence_factor=null",
        "training.plateau_patience=1", "training.plateau_factor=0.5",
        "training.early_stopping_patience=3", "training.max_steps=100",
    ])
    result = train(cfg, tmp_path / "run")
    assert result.stop_reason == "early_stopping"
    assert result.steps == 15
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [0, 5, 10, 15]
    lr = np.array([r["learning_rate"] for r in rows])
    np.testing.assert_allclose(lr[1:] / lr[:-1], 0.5, rtol=1e-3)


def test_divergence_restores_last_good_state_and_slows_down(tmp_path):
    """With a learning rate of 50 the first 5 steps wreck the model (validation loss NaN, or
    far above 10x the step-0 baseline): the trainer goes back to the step-0 state, bit for
    bit, and halves the rate; without the guard the wrecked parameters are kept."""
    from so3krates.config import load_config
    from so3krates.training.trainer import train

    base = [f"data.path={shipped_dataset_path()}", *TINY_TRAIN, "training.learning_rate=50.0",
            "training.schedule=constant", "training.grad_clip=null", "training.valid_every=5",
            "training.max_steps=5", "training.ema_decay=null"]
    guarded = train(load_config(None, base), tmp_path / "guarded")
    unguarded = train(load_config(None, [*base, "training.divergence_factor=null"]), tmp_path / "unguarded")
    assert guarded.steps == unguarded.steps == 5

    def params(run):  # the training state holds the parameters as one flat vector
        ckpt = serialization.msgpack_restore((tmp_path / run / "checkpoints" / "latest.msgpack").read_bytes())
        return ckpt["params"]
    from jax.flatten_util import ravel_pytree

    step0, _ = ravel_pytree(serialization.msgpack_restore((tmp_path / "guarded" / "params.msgpack").read_bytes()))
    restored, wrecked = params("guarded"), params("unguarded")
    assert np.array_equal(restored, step0)  # best = step 0 = restored
    assert not np.array_equal(wrecked, step0)
    rows = read_metrics(tmp_path / "guarded" / "metrics.csv")
    assert not rows[1]["valid_loss"] <= 10 * rows[0]["valid_loss"]  # NaN here
    assert rows[1]["learning_rate"] == pytest.approx(25.0)
    assert read_metrics(tmp_path / "unguarded" / "metrics.csv")[1]["learning_rate"] == pytest.approx(50.0)


def test_learning_rate_decays_over_the_budgeted_steps():
    """Warm-up, then decay by decay_rate over the horizon held in the optimiser state; under a
    wall-clock budget the horizon is the steps that fit at the measured rate."""
    import jax

    from so3krates.config import TrainingConfig
    from so3krates.training.optimizer import (
        budget_horizon, current_learning_rate, decay_horizon, make_optimizer, set_decay_horizon,
    )

    cfg = TrainingConfig(learning_rate=1e-3, decay_rate=0.01, warmup_steps=10, weight_decay=0.0)
    state = make_optimizer(cfg, horizon=1000).init({"w": jax.numpy.zeros(3)})
    assert decay_horizon(state) == 1000
    assert current_learning_rate(cfg, 0, state) == pytest.approx(1e-5)
    assert current_learning_rate(cfg, 10, state) == pytest.approx(1e-3)
    assert current_learning_rate(cfg, 1010, state) == pytest.approx(1e-5, rel=1e-5)
    state = set_decay_horizon(state, 500)
    assert current_learning_rate(cfg, 260, state) == pytest.approx(1e-4, rel=1e-5)
    # 90 steps in the first 9 s -> 10 steps/s; 90 s left -> 900 more steps.
    assert budget_horizon(100, (10, 1.0), 10.0, 90.0, 10**6) == pytest.approx(1000)
    assert budget_horizon(100, (10, 1.0), 10.0, 90.0, 500) == 500
    assert budget_horizon(10, (10, 1.0), 1.0, 90.0, 500) is None


def test_cosine_schedule_falls_from_one_to_decay_rate_over_the_horizon():
    import jax

    from so3krates.config import TrainingConfig
    from so3krates.training.optimizer import current_learning_rate, make_optimizer

    cfg = TrainingConfig(learning_rate=1e-3, decay_rate=0.05, schedule="cosine", warmup_steps=10,
                         weight_decay=0.0)
    state = make_optimizer(cfg, horizon=1000).init({"w": jax.numpy.zeros(3)})
    lr = [current_learning_rate(cfg, s, state) for s in (10, 260, 510, 760, 1010, 5000)]
    assert lr[0] == pytest.approx(1e-3, rel=1e-6)
    assert lr[1] == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi / 4))), rel=1e-5)
    assert lr[2] == pytest.approx(1e-3 * (1 + 0.05) / 2, rel=1e-5)  # halfway: the mean
    assert lr[4] == pytest.approx(5e-5, rel=1e-5) and lr[5] == pytest.approx(5e-5, rel=1e-5)
    assert all(a > b for a, b in zip(lr[:4], lr[1:5]))


def test_weight_decay_shrinks_weight_matrices_only_by_lr_times_rate():
    """Decoupled decay: with zero gradients, masked weights shrink by lr * rate per step (the
    plateau factor included), biases, embeddings and per-element parameters do not move; the
    mask survives the trainer's flat layout."""
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from so3krates.config import TrainingConfig
    from so3krates.training.optimizer import (
        make_optimizer, set_plateau_factor, weight_decay_mask,
    )

    params = {
        "Dense_0": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full(3, 2.0)},
        "attention_0": {"inv_qkv": jnp.full((3, 2), 2.0), "radial_bias_1": jnp.full(2, 2.0)},
        "Embed_0": {"embedding": jnp.full((4, 3), 2.0)},
        "element_scale": jnp.full(4, 2.0),
        "element_shift": jnp.full(4, 2.0),
    }
    mask = weight_decay_mask(params)
    assert float(mask["Dense_0"]["kernel"].min()) == 1.0 and float(mask["attention_0"]["inv_qkv"].min()) == 1.0
    for leaf in (mask["Dense_0"]["bias"], mask["attention_0"]["radial_bias_1"],
                 mask["Embed_0"]["embedding"], mask["element_scale"], mask["element_shift"]):
        assert float(jnp.abs(leaf).max()) == 0.0

    cfg = TrainingConfig(learning_rate=1e-2, schedule="constant", weight_decay=0.5, grad_clip=None)
    flat, unravel = ravel_pytree(params)
    flat_mask = weight_decay_mask(params, flat=True)  # the trainer's layout
    np.testing.assert_array_equal(flat_mask, ravel_pytree(mask)[0])
    opt = make_optimizer(cfg, horizon=100, decay_mask=flat_mask)
    state = set_plateau_factor(opt.init(flat), 0.5)
    for _ in range(3):
        updates, state = opt.update(jnp.zeros_like(flat), state, flat)
        flat = flat + updates
    out = unravel(flat)
    factor = (1 - 1e-2 * 0.5 * 0.5) ** 3
    np.testing.assert_allclose(out["Dense_0"]["kernel"], 2.0 * factor, rtol=1e-6)
    np.testing.assert_allclose(out["attention_0"]["inv_qkv"], 2.0 * factor, rtol=1e-6)
    for leaf in (out["Dense_0"]["bias"], out["Embed_0"]["embedding"], out["element_shift"]):
        np.testing.assert_array_equal(leaf, 2.0)
    with pytest.raises(ValueError, match="decay_mask"):
        make_optimizer(cfg, horizon=100)


def test_clip_by_global_norm_matches_optax():
    """The dot-product clip scales like optax's: unchanged below the threshold, to norm
    max_norm above it, on a pytree of several arrays (float64)."""
    import jax
    import optax

    from so3krates.training.optimizer import clip_by_global_norm

    rng = np.random.default_rng(3)
    tree = {"a": jnp.asarray(rng.normal(size=(7, 5))), "b": jnp.asarray(rng.normal(size=11))}
    norm = float(np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in tree.values())))
    for max_norm in (0.5 * norm, 2.0 * norm):
        ours, _ = clip_by_global_norm(max_norm).update(tree, optax.EmptyState())
        ref, _ = optax.clip_by_global_norm(max_norm).update(tree, optax.EmptyState())
        for key in tree:
            assert ours[key].dtype == tree[key].dtype
            np.testing.assert_allclose(ours[key], ref[key], rtol=1e-13, atol=0)
        got = float(np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in jax.tree.leaves(ours))))
        assert got == pytest.approx(min(norm, max_norm), rel=1e-12)


def test_config_rejects_features_that_do_not_split_into_heads_and_degrees():
    """A clear validation error names the numbers, before any model is built."""
    from pydantic import ValidationError

    from so3krates.config import load_config

    with pytest.raises(ValidationError, match=r"features \(128\).*number of degrees \(3\)"):
        load_config(None, ["model.degrees=[1,2,3]"])
    assert load_config(None, ["model.degrees=[1,2,3]", "model.features=132"]).model.features == 132


def test_checkpoint_of_another_layout_is_refused_clearly(tmp_path):
    """A checkpoint whose arrays do not match the training state (e.g. per-array parameters
    where the trainer keeps one flat vector) is refused with a ValueError, not mis-loaded."""
    from so3krates.training.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "latest.msgpack"
    save_checkpoint(path, {"params": {"a": np.zeros(3), "b": np.ones(2)}, "host": {"step": np.int64(7)}})
    ok = load_checkpoint(path, {"params": {"a": np.ones(3), "b": np.zeros(2)}, "host": {"step": np.int64(0)}})
    assert int(ok["host"]["step"]) == 7 and np.array_equal(ok["params"]["b"], np.ones(2))
    with pytest.raises(ValueError, match="checkpoint"):
        load_checkpoint(path, {"params": np.zeros(5), "host": {"step": np.int64(0)}})
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(path, {"params": {"a": np.zeros(4), "b": np.zeros(2)}, "host": {"step": np.int64(0)}})
