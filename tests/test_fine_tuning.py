"""Fine-tuning (``so3krates train --init-from DIR``): the architecture from the initial model,
frozen parameters bitwise unchanged, a head start over training from scratch, new elements
and their reference energies, exact resume after kill -9, one-line CLI errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import ase.io
import jax
import numpy as np
import pytest
import yaml
from flax import serialization
from jax.flatten_util import ravel_pytree

from fault_helpers import assert_one_line_error, cli
from so3krates.config import load_config
from so3krates.data import read_dataset
from so3krates.data.split import load_split
from so3krates.datasets import shipped_dataset_path
from so3krates.model_io import Model, build_module, load_model
from so3krates.training.checkpoint import read_checkpoint
from so3krates.training.freezing import (
    FROZEN,
    TRAINABLE,
    Partition,
    count,
    freeze_labels,
    trainable_mask,
)
from so3krates.training.statistics import ReferenceEnergyFit
from so3krates.training.trainer import train
from test_training import run_cli

# The initial model: two interaction blocks (for blocks:K), trained on the shipped GFN2-xTB
# ethanol set at a constant rate (2000 steps: forces MAE ~0.1 eV/Å on its validation set).
ARCH = ["model.features=16", "model.num_layers=2", "model.num_radial=8", "model.degrees=[1,2]",
        "model.cutoff=4.0"]
BASE_TRAIN = ["data.n_train=200", "data.n_valid=50", "data.n_test=50", "training.batch_size=4",
              "training.max_steps=2000", "training.valid_every=500",
              "training.decay_steps=100000", "training.progress=false"]
# A fine-tuning run on the same molecule, another split (a "second dataset" of it).
FINE = [f"data.path={shipped_dataset_path()}", "data.n_train=60", "data.n_valid=20",
        "data.n_test=0", "data.split_seed=7", "training.batch_size=4", "training.max_steps=30",
        "training.valid_every=10", "training.learning_rate=1e-3", "training.progress=false"]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "model"
    train(load_config(None, [f"data.path={shipped_dataset_path()}", *ARCH, *BASE_TRAIN]), out)
    return out


def saved_params(directory: Path) -> dict:
    return serialization.msgpack_restore((directory / "params.msgpack").read_bytes())


def metrics(directory: Path) -> list[dict]:
    with open(directory / "metrics.csv") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def leaves(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def checkpoint_trees(run: Path, initial: dict, strategy: str, new_elements=()) -> dict:
    """The parameter and EMA trees of a fine-tuning run's last checkpoint (two flat vectors:
    trainable and frozen, split as the trainer splits them)."""
    raw = read_checkpoint(run / "checkpoints" / "latest.msgpack")
    mask = trainable_mask(initial, freeze_labels(initial, strategy, 2), new_elements)
    _, unravel = ravel_pytree(initial)
    partition = Partition(np.concatenate([np.ravel(m) for m in jax.tree.leaves(mask)]))
    return {key: jax.tree.map(np.asarray, unravel(partition.join(
        {TRAINABLE: raw[key][TRAINABLE], FROZEN: raw[key][FROZEN]}))) for key in ("params", "ema")}


# --------------------------------------------------------------------------------------------
# Labels of the freezing strategies (no training)
# --------------------------------------------------------------------------------------------

def full_model_params():
    """Parameter shapes of a two-block model with every optional part: charge/spin
    embeddings, charge and Hirshfeld heads, EFA after each block."""
    import jax.numpy as jnp

    from conftest import small_config

    cfg = small_config("float32", charge_spin=True, electrostatics=True, dispersion="learned",
                       efa={"enabled": True})
    module = build_module(cfg, 1.0)
    electronic = (jnp.zeros(2, jnp.int32), jnp.zeros(1), jnp.zeros(1), jnp.ones(2, bool))
    return jax.eval_shape(lambda: module.init(
        jax.random.PRNGKey(0), jnp.array([1, 6], jnp.int32), jnp.ones((1, 3)), jnp.array([0]),
        jnp.array([1]), jnp.array([True]), False, electronic, jnp.zeros((2, 3))))["params"]


@pytest.mark.parametrize("strategy, frozen", [
    ("none", set()),
    ("embedding", {"Embed_0", "charge_embedding", "spin_embedding"}),
    ("blocks:0", {"Embed_0", "charge_embedding", "spin_embedding"}),
    ("blocks:1", {"Embed_0", "charge_embedding", "spin_embedding", "attention_0", "exchange_0",
                  "efa_0"}),
    ("blocks:2", {"Embed_0", "charge_embedding", "spin_embedding", "attention_0", "exchange_0",
                  "efa_0", "attention_1", "exchange_1", "efa_1"}),
    ("all_but_readout", {"Embed_0", "charge_embedding", "spin_embedding", "attention_0",
                         "exchange_0", "efa_0", "attention_1", "exchange_1", "efa_1"}),
])
def test_freeze_labels_follow_the_parameter_paths(strategy, frozen):
    params = full_model_params()
    labels = freeze_labels(params, strategy, num_layers=2)
    readout = {"Dense_0", "Dense_1", "element_scale", "element_shift", "charge_head",
               "hirshfeld_head"}
    assert set(params) == readout | {"Embed_0", "charge_embedding", "spin_embedding",
                                     "attention_0", "exchange_0", "efa_0", "attention_1",
                                     "exchange_1", "efa_1"}
    for name, sub in labels.items():
        want = "frozen" if name in frozen else "trainable"
        assert set(jax.tree.leaves(sub)) == {want}, (strategy, name)
    # New elements: their rows of the per-element tables train whatever the strategy.
    mask = trainable_mask(params, labels, new_elements=[8, 9])
    n_trainable, n_frozen = count(mask)
    assert n_trainable + n_frozen == sum(np.size(x) for x in jax.tree.leaves(mask))
    if "Embed_0" in frozen:
        rows = mask["Embed_0"]["embedding"]
        assert rows[[8, 9]].all() and not rows[[1, 6, 7]].any()
        assert n_frozen == sum(np.size(x) for k in frozen for x in jax.tree.leaves(params[k])) - 2 * 32
    with pytest.raises(ValueError, match="has 2 interaction blocks"):
        freeze_labels(params, "blocks:3", num_layers=2)


def test_reference_energies_of_new_elements_fit_the_residual():
    """keep: the known elements' energies as they are, the new ones' the least-squares fit of
    E - sum_{Z known} n_Z e_Z (checked against lstsq on the counts of the new elements)."""
    rng = np.random.default_rng(0)
    numbers = [rng.choice([1, 6, 8, 7], size=rng.integers(3, 12)) for _ in range(40)]
    true = {1: -13.6, 6: -1029.0, 7: -1485.0, 8: -2041.0}
    energy = np.array([sum(true[int(z)] for z in zs) for zs in numbers]) + rng.normal(0, 0.1, 40)
    known = {1: -13.0, 6: -1030.0, 16: -10800.0}  # 16: an element of the old model only
    fit = ReferenceEnergyFit()
    fit.add(numbers[:25], energy[:25])
    fit.add(numbers[25:], energy[25:])
    refs = fit.solve_keeping(known)
    assert {z: refs[z] for z in known} == known and set(refs) == {1, 6, 7, 8, 16}
    counts = np.array([[np.sum(zs == z) for z in (1, 6, 7, 8)] for zs in numbers], float)
    residual = energy - counts[:, 0] * known[1] - counts[:, 1] * known[6]
    want, *_ = np.linalg.lstsq(counts[:, 2:], residual, rcond=None)
    np.testing.assert_allclose([refs[7], refs[8]], want, rtol=1e-10)
    assert fit.solve_keeping({**known, 7: 1.0, 8: 2.0})[8] == 2.0  # nothing new: nothing fitted


# --------------------------------------------------------------------------------------------
# Frozen parameters
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("strategy, frozen", [
    ("embedding", {"Embed_0"}),
    ("all_but_readout", {"Embed_0", "attention_0", "exchange_0", "attention_1", "exchange_1"}),
])
def test_frozen_parameters_stay_bitwise_and_the_others_train(base_model, tmp_path, strategy,
                                                             frozen):
    """30 steps with weight decay (on): the frozen arrays of the last checkpoint (parameters
    and EMA) and of the saved model are the initial model's, bit for bit; every trainable
    array has moved."""
    run = tmp_path / "fine"
    result = train(load_config(None, [*FINE, f"training.init_from={base_model}",
                                      f"training.freeze={strategy}",
                                      "training.weight_decay=0.01"]), run)
    assert result.steps == 30
    initial = saved_params(base_model)
    state = checkpoint_trees(run, initial, strategy)
    starts = leaves(initial)
    for key, tree in (*state.items(), ("saved model", saved_params(run))):
        for path, value in leaves(tree).items():
            start = starts[path]
            if path.split("'")[1] in frozen:
                assert same_bits(value, start), f"{key}: frozen {path} changed"
            elif key == "params":
                assert np.abs(value - start).max() > 1e-7, f"trainable {path} did not train"
    # provenance, and an ordinary model directory
    meta = yaml.safe_load((run / "model.yaml").read_text())
    origin = meta["init_from"]
    assert origin["path"] == str(base_model.resolve()) and origin["freeze"] == strategy
    assert origin["params_sha256"] == yaml.safe_load(
        (base_model / "model.yaml").read_text())["params_sha256"]
    assert origin["step"] == 2000 and origin["frozen_parameters"] == sum(
        np.size(v) for p, v in leaves(initial).items() if p.split("'")[1] in frozen)
    model = load_model(run)
    atoms = ase.io.read(shipped_dataset_path(), index=0)
    atoms.calc = model.calculator()
    assert np.isfinite(atoms.get_potential_energy()) and np.isfinite(atoms.get_forces()).all()


# --------------------------------------------------------------------------------------------
# A head start on related data
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_fine_tuned_model_starts_lower_and_stays_ahead_of_scratch(base_model, shared_data,
                                                                  tmp_path):
    """GFN2-xTB ethanol -> MD17 ethanol (PBE+vdW-TS): on the same 100 validation structures,
    the fine-tuned model's first validation (step 0) is well below a new model's, and so is
    its error after 200 steps of both (the same settings otherwise; the new model's
    architecture is the initial model's). Measured: forces MAE 266 vs 700 meV/Å at step 0,
    150 vs 622 after 200 steps (validation loss 0.13 vs 0.94, 0.042 vs 0.73)."""
    common = [f"data.path={shared_data / 'md17_ethanol_2000.npz'}", "data.energy_unit=kcal/mol",
              "data.n_train=200", "data.n_valid=100", "data.n_test=0", "training.batch_size=4",
              "training.max_steps=200", "training.valid_every=200", "training.progress=false",
              "training.learning_rate=1e-3"]
    train(load_config(None, [*common, *ARCH]), tmp_path / "scratch")
    train(load_config(None, [*common, f"training.init_from={base_model}"]), tmp_path / "fine")
    scratch, fine = metrics(tmp_path / "scratch"), metrics(tmp_path / "fine")
    assert [r["step"] for r in scratch] == [r["step"] for r in fine] == [0, 200]
    for s, f in zip(scratch, fine):
        assert f["valid_loss"] < 0.5 * s["valid_loss"], (s, f)
        assert f["valid_forces_mae"] < 0.6 * s["valid_forces_mae"], (s, f)


# --------------------------------------------------------------------------------------------
# New elements
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_new_element_is_learnt_and_its_reference_energy_fitted(tmp_path):
    """A model of C and H (the neutral C10H2 frames of the shipped charged set) fine-tuned on
    ethanol (adds O) with reference_energies=keep and a frozen embedding: H and C keep their
    reference energies; O's is the mean of what the initial model (O at 0 eV) leaves
    unexplained on the training set (one O per molecule); O's embedding row trains while the
    known elements' stay bitwise; the fine-tuned model knows O."""
    frames = [a for a in ase.io.read(shipped_dataset_path("charged_gfn2"), ":")
              if a.info["config_type"] == "C10H2_md"]
    ase.io.write(tmp_path / "c10h2.extxyz", frames, format="extxyz")
    base = tmp_path / "ch"
    train(load_config(None, [f"data.path={tmp_path / 'c10h2.extxyz'}", "data.n_train=80",
                             "data.n_valid=20", "data.n_test=0", *ARCH, "training.batch_size=4",
                             "training.max_steps=100", "training.valid_every=100",
                             "training.progress=false"]), base)
    old = load_model(base, radial_knots=0)
    assert old.elements == [1, 6]

    run = tmp_path / "fine"
    train(load_config(None, [*FINE, f"training.init_from={base}", "training.freeze=embedding",
                             "training.reference_energies=keep"]), run)
    model = load_model(run)
    assert model.elements == [1, 6, 8]
    assert model.reference_energies[1] == old.reference_energies[1]
    assert model.reference_energies[6] == old.reference_energies[6]
    data = read_dataset(shipped_dataset_path())
    train_set = data.subset(load_split(run, len(data))["train"])
    probe = Model(base, old.config, old.params, {**old.reference_energies, 8: 0.0},
                  old.energy_scale, old.dtype, radial_knots=0)
    residual = []
    for e, numbers, positions in zip(train_set.energy, train_set.numbers, train_set.positions):
        atoms = ase.Atoms(numbers, positions, calculator=probe.calculator())
        residual.append(e - atoms.get_potential_energy())
    assert model.reference_energies[8] == pytest.approx(np.mean(residual), abs=1e-4)
    rows = metrics(run)
    # The fit mattered: without it every energy would be off by the O energy.
    assert rows[0]["valid_energy_mae"] < 0.05 * abs(model.reference_energies[8])
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"]

    start, end = saved_params(base), checkpoint_trees(run, saved_params(base), "embedding", [8])
    for z in range(119):
        row_moved = not same_bits(end["params"]["Embed_0"]["embedding"][z],
                                  start["Embed_0"]["embedding"][z])
        assert row_moved == (z == 8), z
    atoms = ase.io.read(shipped_dataset_path(), index=0)
    atoms.calc = model.calculator()
    assert np.isfinite(atoms.get_potential_energy()) and np.isfinite(atoms.get_forces()).all()


# --------------------------------------------------------------------------------------------
# Resume, CLI
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_killed_fine_tuning_run_resumes_to_the_uninterrupted_result(base_model, tmp_path):
    """float64 (converted from the float32 initial model: model.dtype may differ), blocks:1,
    weight decay, the rate decaying over the budget: killed (-9) at step 25 and run again, the
    run ends where an uninterrupted one does; it resumes only from the same origin."""
    args = ["train", "--init-from", str(base_model), "--freeze", "blocks:1",
            *[a for s in FINE for a in ("--set", s)], "--set", "training.max_steps=40",
            "--set", "model.dtype=float64", "--set", "training.decay_steps=budget",
            "--set", "training.weight_decay=0.01"]
    full, broken = tmp_path / "full", tmp_path / "broken"
    run_cli(*args, "--output", str(full))
    killed = run_cli(*args, "--output", str(broken), env_extra={"SO3KRATES_KILL_AT_STEP": "25"},
                     check=False)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert max(r["step"] for r in metrics(broken)) == 20
    resumed = run_cli(*args, "--output", str(broken))
    assert "resuming from step 20" in resumed.stdout
    assert "parameters trainable" in resumed.stdout and "frozen (freeze: blocks:1)" in resumed.stdout

    a, b = (read_checkpoint(d / "checkpoints" / "latest.msgpack") for d in (full, broken))
    for key in ("params", "ema"):
        for part in (TRAINABLE, FROZEN):
            assert a[key][part].dtype == np.float64
            np.testing.assert_allclose(b[key][part], a[key][part], rtol=1e-9, atol=1e-12)
    for x, y in zip(jax.tree.leaves(saved_params(full)), jax.tree.leaves(saved_params(broken))):
        np.testing.assert_allclose(y, x, rtol=1e-9, atol=1e-12)
    ma, mb = metrics(full), metrics(broken)
    assert [r["step"] for r in ma] == [r["step"] for r in mb] == [0, 10, 20, 30, 40]
    for ra, rb in zip(ma, mb):
        for key in ("learning_rate", "valid_loss", "valid_forces_mae"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-9)

    # Resuming from another origin is refused, with one line each.
    other = tmp_path / "other"
    shutil.copytree(base_model, other)
    wrong = run_cli(*args[:1], "--init-from", str(other), *args[3:], "--output", str(full),
                    check=False)
    assert wrong.returncode == 2 and "holds a fine-tuning run from" in wrong.stdout, wrong.stdout
    assert "Traceback" not in wrong.stdout + wrong.stderr
    assert len(wrong.stdout.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_errors_of_fine_tuning_are_one_line(base_model, capsys, tmp_path):
    data = ["--data", str(shipped_dataset_path()), "--set", "training.max_steps=1"]
    run = str(tmp_path / "run")
    assert_one_line_error(*cli(capsys, "train", *data, "--init-from", str(tmp_path / "nope"),
                               "--output", run), "no such directory")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(*cli(capsys, "train", *data, "--init-from", str(tmp_path / "empty"),
                               "--output", run), "is not a model directory: model.yaml is missing")
    (tmp_path / "file").write_text("x")
    assert_one_line_error(*cli(capsys, "train", *data, "--init-from", str(tmp_path / "file"),
                               "--output", run), "not a model directory")
    init = ["--init-from", str(base_model)]
    assert_one_line_error(*cli(capsys, "train", *data, *init, "--output", run,
                               "--set", "model.features=32"), "model.features=32 would change")
    assert_one_line_error(*cli(capsys, "train", *data, *init, "--output", run,
                               "--set", "model.cutoff=5.0"), "model.cutoff=5.0 would change")
    assert_one_line_error(*cli(capsys, "train", *data, *init, "--output", run,
                               "--freeze", "heads"), "unknown freeze strategy 'heads'")
    assert_one_line_error(*cli(capsys, "train", *data, *init, "--output", run,
                               "--freeze", "blocks:3"), "has 2 interaction blocks")
    assert_one_line_error(*cli(capsys, "train", *data, "--output", run, "--freeze", "embedding"),
                          "needs training.init_from")
    assert_one_line_error(*cli(capsys, "train", *data, *init, "--output", str(base_model)),
                          "is the directory of the model to fine-tune")
    assert not (tmp_path / "run").exists()  # nothing written
    # A run directory of a model trained from scratch is not resumed as a fine-tuning run.
    scratch = tmp_path / "scratch"
    shutil.copytree(base_model, scratch)
    assert_one_line_error(*cli(capsys, "train", *data, *init, "--output", str(scratch)),
                          "holds a run trained from scratch")
    # Settings that do not change the network may differ from the initial model's.
    assert_one_line_error(*cli(capsys, "train", *data, *init, "--output", str(scratch),
                               "--set", "model.dtype=float64"), "holds a run trained from scratch")
