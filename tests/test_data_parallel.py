"""Data-parallel training over processes: the exchange, batch shares, equivalence with one
process, kill -9 and resume, errors from the processes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from flax import serialization

from conftest import TINY_TRAIN
from so3krates.batching import GraphDataset
from so3krates.config import load_config
from so3krates.data import DataError
from so3krates.datasets import shipped_dataset_path
from so3krates.training.data_parallel import GradientExchange, core_groups
from test_training import jax_leaves, read_metrics, run_cli


def test_exchange_gathers_every_row_in_rank_order_call_after_call(tmp_path):
    size, length, calls = 3, 1000, 50
    barrier = threading.Barrier(size)
    exchanges = [GradientExchange(r, size, barrier, tmp_path) for r in range(size)]
    seen = [[] for _ in range(size)]

    def run(rank):
        ex = exchanges[rank]
        ex.open(length, np.float64)
        for k in range(calls):
            rows = ex.gather(np.full(length, 100.0 * k + rank))
            seen[rank].append(rows.sum(axis=0)[0] if rows.shape == (size, length) and np.all(
                rows == np.arange(size)[:, None] + 100.0 * k) else np.nan)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    expected = [size * 100.0 * k + sum(range(size)) for k in range(calls)]
    assert seen == [expected] * size


def test_shares_of_a_batch_cover_it_once_even_when_the_last_is_short(tmp_path):
    from so3krates.data import read_dataset

    data = read_dataset(shipped_dataset_path()).subset(np.arange(11))
    order = np.random.default_rng(0).permutation(11)
    whole = GraphDataset(data, 5.0, 4)
    shares = [GraphDataset(data, 5.0, 2) for _ in range(2)]
    assert whole.num_batches() == shares[0].num_batches(shards=2) == 3
    seen = []
    for (g, _), (g0, _), (g1, _) in zip(whole.batches(order), shares[0].batches(order, shard=(0, 2)),
                                        shares[1].batches(order, shard=(1, 2))):
        n = [int(x.structure_mask.sum()) for x in (g, g0, g1)]
        assert n[0] == n[1] + n[2] and n[1] >= n[2]
        np.testing.assert_array_equal(g.positions[g.atom_mask],
                                      np.concatenate([g0.positions[g0.atom_mask],
                                                      g1.positions[g1.atom_mask]]))
        seen.append(n)
    assert seen[-1] == [3, 2, 1]
    # the last chunk of 11 % 4 = 3 structures with shares of 2: rank 1's share of 1 structure
    assert list(shares[1].batches(order, start=2, shard=(1, 2)))[0][0].structure_mask.sum() == 1


def test_core_groups_are_disjoint_and_cover_the_cores():
    assert core_groups(2, [0, 1]) == [[0], [1]]
    assert core_groups(2, [0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
    assert core_groups(3, [5]) == [[5], [5], [5]]  # more processes than cores: shared


def test_batch_size_must_split_over_processes():
    with pytest.raises(ValueError, match="does not split evenly"):
        load_config(None, ["training.batch_size=5", "training.processes=2"])


def test_two_processes_match_one_and_a_killed_run_resumes_in_one(tmp_path):
    # float64 and 63 training structures in batches of 4: the last batch of each epoch has 3,
    # split 2 + 1 over the processes, so the gradient average must weight the shares. The
    # two-process run is killed after that batch (step 16) and resumed in one process.
    args = ["train", "--data", str(shipped_dataset_path()),
            *[a for s in TINY_TRAIN for a in ("--set", s)],
            "--set", "data.n_train=63", "--set", "model.dtype=float64",
            "--set", "model.output_init=lecun_normal", "--set", "training.learning_rate=3e-3",
            "--set", "training.buckets=1",  # compiling takes most of this test's time
            "--set", "training.max_steps=40", "--set", "training.valid_every=10"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli(*args, "--output", str(one))
    killed = run_cli(*args, "--output", str(two), "--processes", "2",
                     env_extra={"SO3KRATES_KILL_AT_STEP": "25"}, check=False)
    assert killed.returncode == 1, killed.stdout + killed.stderr
    assert "exited with code -9" in killed.stdout  # both processes killed themselves
    assert max(r["step"] for r in read_metrics(two / "metrics.csv")) == 20
    resumed = run_cli(*args, "--output", str(two), "--processes", "1")
    assert "resuming from step 20" in resumed.stdout, resumed.stdout + resumed.stderr

    ma, mb = read_metrics(one / "metrics.csv"), read_metrics(two / "metrics.csv")
    assert [r["step"] for r in ma] == [r["step"] for r in mb] == [0, 10, 20, 30, 40]
    moved = abs(ma[-1]["valid_loss"] - ma[0]["valid_loss"]) / ma[0]["valid_loss"]
    assert moved > 1e-3  # the model changed enough for the comparison to mean something
    for ra, rb in zip(ma, mb):
        for key in ("learning_rate", "train_loss", "valid_loss", "valid_forces_mae"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-9, nan_ok=True), (ra["step"], key)
    a = serialization.msgpack_restore((one / "params.msgpack").read_bytes())
    b = serialization.msgpack_restore((two / "params.msgpack").read_bytes())
    for x, y in zip(jax_leaves(a), jax_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


def test_an_error_in_the_processes_is_raised_as_itself(tmp_path):
    from so3krates.training.trainer import train

    cfg = load_config(None, [f"data.path={tmp_path / 'missing.xyz'}", *TINY_TRAIN,
                             "training.processes=2"])
    with pytest.raises(DataError, match="missing.xyz"):
        train(cfg, tmp_path / "run")
