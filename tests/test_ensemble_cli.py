"""``so3krates train --ensemble N`` and ``evaluate`` of the ensemble directory it writes."""

from __future__ import annotations

import json

import numpy as np
import yaml
from jax.flatten_util import ravel_pytree
from fault_helpers import assert_error, cli

from so3krates.datasets import shipped_dataset_path
from so3krates.ensemble import is_ensemble, load_ensemble

TINY = ["data.n_train=24", "data.n_valid=8", "data.n_test=16", "model.features=8",
        "model.num_layers=1", "model.num_radial=6", "model.degrees=[1]",
        "training.batch_size=4", "training.max_steps=20", "training.valid_every=10",
        "training.progress=false"]


def test_train_an_ensemble_and_evaluate_it(capsys, tmp_path):
    out = tmp_path / "committee"
    sets = [a for s in TINY for a in ("--set", s)]
    code, text = cli(capsys, "train", "--data", shipped_dataset_path(), *sets,
                     "--ensemble", "2", "--output", out)
    assert code == 0, text
    assert is_ensemble(out)
    spec = yaml.safe_load((out / "ensemble.yaml").read_text())
    assert spec["n_members"] == 2 and spec["training"]["seeds"] == [0, 1]
    ensemble = load_ensemble(out)
    a, b = (ravel_pytree(ensemble.members[k].params)[0] for k in range(2))
    assert a.shape == b.shape and not np.allclose(a, b)  # different seeds, different members
    code, text = cli(capsys, "evaluate", out, "--json", tmp_path / "m.json")
    assert code == 0, text
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n_members"] == 2 and metrics["split"] == "test"
    assert metrics["n_structures"] == 16
    assert metrics["energy_uncertainty_mean"] > 0 and metrics["forces_uncertainty_mean"] > 0
    assert -1.0 <= metrics["forces_uncertainty_spearman"] <= 1.0


def test_an_ensemble_of_one_is_refused(capsys, tmp_path):
    assert_error(cli(capsys, "train", "--data", shipped_dataset_path(), "--ensemble", "1",
                     "--output", tmp_path / "m"), "at least 2 members")
