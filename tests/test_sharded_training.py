"""Training on several devices (``jax.sharding``): batch shares, equivalence with one device
(float64), kill -9 and resume across device counts, multi-host, errors."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest
from flax import serialization

from conftest import TINY_TRAIN
from so3krates.batching import GraphDataset
from so3krates.config import load_config
from so3krates.datasets import shipped_dataset_path
from test_training import jax_leaves, read_metrics, run_cli

# float64 and 63 training structures in batches of 4: the last batch of each epoch has 3,
# split 2 + 1 (two devices) or 1 + 1 + 1 + 0 (four), so the gradient sum must weight the
# shares and accept an empty one.
ARGS = ["train", "--data", str(shipped_dataset_path()),
        *[a for s in TINY_TRAIN for a in ("--set", s)],
        "--set", "data.n_train=63", "--set", "model.dtype=float64",
        "--set", "model.output_init=lecun_normal", "--set", "training.learning_rate=3e-3",
        "--set", "training.max_steps=40", "--set", "training.valid_every=10"]


def assert_same_run(a, b):
    ma, mb = read_metrics(a / "metrics.csv"), read_metrics(b / "metrics.csv")
    assert [r["step"] for r in ma] == [r["step"] for r in mb] == [0, 10, 20, 30, 40]
    moved = abs(ma[-1]["valid_loss"] - ma[0]["valid_loss"]) / ma[0]["valid_loss"]
    assert moved > 1e-3  # the model changed enough for the comparison to mean something
    for ra, rb in zip(ma, mb):
        for key in ("learning_rate", "train_loss", "valid_loss", "valid_forces_mae"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-9, nan_ok=True), (ra["step"], key)
    pa = serialization.msgpack_restore((a / "params.msgpack").read_bytes())
    pb = serialization.msgpack_restore((b / "params.msgpack").read_bytes())
    for x, y in zip(jax_leaves(pa), jax_leaves(pb)):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "one"
    run_cli(*ARGS, "--output", str(out))
    return out


def test_shares_of_a_batch_cover_it_once_with_one_capacity():
    import jax

    from so3krates.data import read_dataset
    from so3krates.training.sharding import device_mesh, sharded_batches

    data = read_dataset(shipped_dataset_path()).subset(np.arange(11))
    order = np.random.default_rng(0).permutation(11)
    whole, shares = GraphDataset(data, 5.0, 4), GraphDataset(data, 5.0, 4)
    mesh = device_mesh(1)  # one device in this process: a mesh of one share per batch
    seen = [int(g.structure_mask.sum()) for g, _ in sharded_batches(shares, mesh, order)]
    assert seen == [4, 4, 3]
    for (g, _), (gs, _) in zip(whole.batches(order), sharded_batches(shares, mesh, order)):
        assert gs.positions.shape == (1, *g.positions.shape)
        np.testing.assert_array_equal(np.asarray(gs.positions[0]), g.positions)
        assert isinstance(gs.positions, jax.Array)
    # a batch padded to a larger capacity of the ladder holds the same structures
    one = order[8:9]
    big = shares.ladder[-1]
    assert shares.capacity_of(one) != big
    g, _ = shares.batch(one, capacity=big)
    g1, _ = shares.batch(one)
    assert g.positions.shape[0] == big.atoms
    np.testing.assert_array_equal(g.positions[g.atom_mask], g1.positions[g1.atom_mask])


def test_batch_size_must_split_over_devices():
    with pytest.raises(ValueError, match="does not split evenly"):
        load_config(None, ["training.batch_size=5", "training.devices=2"])
    with pytest.raises(ValueError, match="replaced by training.devices"):
        load_config(None, ["training.processes=2"])


def test_more_devices_than_jax_has_is_one_clear_line(tmp_path):
    from so3krates.training.trainer import train

    cfg = load_config(None, [f"data.path={shipped_dataset_path()}", *TINY_TRAIN,
                             "training.devices=2"])
    with pytest.raises(ValueError, match="JAX sees 1 cpu device"):
        train(cfg, tmp_path / "run")


def test_two_and_four_devices_match_one_and_resume_across_counts(tmp_path, one_device):
    # two devices, killed after step 25 (a checkpoint at 20), resumed on four
    run = tmp_path / "run"
    killed = run_cli(*ARGS, "--output", str(run), "--devices", "2",
                     env_extra={"SO3KRATES_KILL_AT_STEP": "25"}, check=False)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert max(r["step"] for r in read_metrics(run / "metrics.csv")) == 20
    resumed = run_cli(*ARGS, "--output", str(run), "--devices", "4")
    assert "resuming from step 20" in resumed.stdout, resumed.stdout + resumed.stderr
    assert_same_run(one_device, run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_hosts_match_one_device(tmp_path, one_device):
    # two processes on this machine, one CPU device each, joined by jax.distributed (gloo)
    run = tmp_path / "run"
    address = f"127.0.0.1:{_free_port()}"
    hosts = [subprocess.Popen(
        [sys.executable, "-m", "so3krates.cli", *ARGS, "--output", str(run), "--devices", "2",
         "--coordinator", address, "--hosts", "2", "--host-id", str(i)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [h.communicate(timeout=600)[0] for h in hosts]
    assert [h.returncode for h in hosts] == [0, 0], logs
    assert_same_run(one_device, run)


def test_multi_host_arguments_come_together(tmp_path):
    out = run_cli(*ARGS, "--output", str(tmp_path / "x"), "--hosts", "2", check=False)
    assert out.returncode == 2
    assert "needs --coordinator" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
