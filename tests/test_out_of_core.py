"""Datasets larger than memory: ``so3krates convert`` to HDF5 (exact read-back, chunked and
atomic), the disk-backed batches (same as in memory, every structure once per epoch, resume
position, prefetch thread), streaming statistics, training equal to in-memory training, and
one-line CLI errors."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import ase.io
import h5py
import numpy as np
import pytest
from flax import serialization

from conftest import TINY_TRAIN
from so3krates.batching import GraphDataset
from fault_helpers import assert_one_line_error, cli
from so3krates.config import ModelConfig, load_config
from so3krates.data import DataError, read_dataset
from so3krates.data.chunked import read_chunks
from so3krates.data.hdf5 import FORMAT, VERSION, HDF5Dataset, convert, write_hdf5
from so3krates.datasets import shipped_dataset_path
from so3krates.neighbours import neighbour_list
from so3krates.streaming import StreamingGraphDataset, prefetch
from so3krates.terms.physical import PhysicalTerms
from so3krates.training.statistics import streaming_summary, summarise
from so3krates.training.trainer import _epoch_order, train
from test_training import jax_leaves

LABELS = ("energy", "cells", "pbc", "charge", "spin", "stress", "dipole")


def assert_same_data(a, b) -> None:
    """Every array of two datasets equal, bit for bit (NaN where NaN), dtypes of the labels."""
    assert len(a) == len(b)
    for name in ("numbers", "positions", "forces", "charges"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        for k, (u, v) in enumerate(zip(x or [], y or [])):
            assert u.dtype == v.dtype and np.array_equal(u, v, equal_nan=True), (name, k)
    for name in LABELS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), name


def mixed_file(tmp_path):
    """Molecules without stress, then periodic cells with stress and charges: the optional
    labels appear only in later chunks."""
    molecules = ase.io.read(shipped_dataset_path(), ":5")
    cells = ase.io.read(shipped_dataset_path("cu_emt"), ":6")
    for atoms in cells:
        atoms.arrays["partial_charges"] = np.zeros(len(atoms))
        atoms.info["dipole"] = np.array([0.1, -0.2, 0.3])
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, molecules + cells, format="extxyz")
    return path, {"charges_key": "partial_charges", "nan_labels": "mask"}


@pytest.fixture(scope="module")
def ethanol_h5(tmp_path_factory):
    """The shipped ethanol set as HDF5, pair counts within 5 Å (the default cutoff)."""
    out = tmp_path_factory.mktemp("h5") / "ethanol.h5"
    convert(shipped_dataset_path(), out, chunk_size=300, cutoff=5.0)
    return out


@pytest.mark.parametrize("name", ["ethanol_gfn2", "cu_emt", "charged_gfn2", "mixed"])
def test_convert_reads_back_every_array_exactly(name, tmp_path):
    if name == "mixed":
        src, options = mixed_file(tmp_path)
    else:
        src = shipped_dataset_path(name)
        options = {"charges_key": "partial_charges"} if name == "charged_gfn2" else {}
    out = tmp_path / "data.h5"
    n = convert(src, out, options, chunk_size=3 if name == "mixed" else 97, cutoff=4.0)
    ref = read_dataset(src, **options)
    assert n == len(ref)
    disk = HDF5Dataset(out)
    assert_same_data(disk.load(), ref)
    if name == "mixed":  # labels of later chunks only: NaN before
        assert np.isnan(disk.load().stress[:5]).all() and np.isfinite(disk.load().stress[5:]).all()
    # a view reads structures in any order, duplicates included
    idx = np.array([n - 1, 0, 2, 2, n // 2])
    assert_same_data(disk.subset(idx[::-1]).load(), ref.subset(idx[::-1]))
    assert_same_data(disk.subset(idx).load([4, 0]), ref.subset(idx[[4, 0]]))
    attrs = disk.attrs
    assert attrs["format"] == FORMAT and attrs["version"] == VERSION
    assert attrs["source"] == str(src) and attrs["n_structures"] == n
    assert attrs["energy_unit"] == "eV" and attrs["length_unit"] == "Angstrom"
    assert disk.elements == ref.elements
    with h5py.File(out) as h5:
        assert h5["forces"].attrs["unit"] == "eV/Angstrom" and h5["offsets"][-1] == ref.n_atoms.sum()
    counts = [len(neighbour_list(r, c, p, 4.0).centers)
              for r, c, p in zip(ref.positions, ref.cells, ref.pbc)]
    np.testing.assert_array_equal(disk.pair_counts(4.0), counts)
    assert disk.pair_counts(5.0) is None  # other cutoffs are counted when training
    # chunks: every structure once, bounded blocks, positions of a subset
    view = disk.subset(np.arange(n)[::-2])
    seen = np.concatenate([pos for pos, chunk in view.chunks(size=4)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(len(view)))


def test_chunked_reading_names_structures_by_their_index_in_the_file(tmp_path):
    frames = ase.io.read(shipped_dataset_path(), ":12")
    frames[7].calc.results["forces"][2, 1] = np.nan
    path = tmp_path / "bad.extxyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(DataError, match=r"structure 7: forces contain NaN"):
        list(read_chunks(path, chunk_size=3))
    frames[7].positions[1] = frames[7].positions[0] + 0.01  # overlap, now in chunk 2 of 5
    frames[7].calc.results["forces"][2, 1] = 0.0
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(DataError, match=r"structure 7: atoms 0 and 1 overlap"):
        list(read_chunks(path, chunk_size=5))


def test_streaming_statistics_equal_in_memory_ones(tmp_path):
    src, options = mixed_file(tmp_path)
    data = read_dataset(src, **options)
    out = tmp_path / "mixed.h5"
    convert(src, out, options, chunk_size=4)
    terms = PhysicalTerms.from_config(ModelConfig(zbl=True, cutoff=4.0))
    view = HDF5Dataset(out).subset(np.arange(len(data))[::-1])
    a = summarise(data, terms)
    b = streaming_summary((chunk for _, chunk in view.chunks(size=3)), terms)
    assert a.reference_energies.keys() == b.reference_energies.keys() == {1, 6, 8, 29}
    for z, e in a.reference_energies.items():
        assert b.reference_energies[z] == pytest.approx(e, rel=1e-10, abs=1e-10)
    assert b.force_scale == pytest.approx(a.force_scale, rel=1e-13)
    assert (b.has_stress, b.has_dipole, b.has_charges) == (True, True, True)
    assert (a.has_stress, a.has_dipole, a.has_charges) == (True, True, True)


@pytest.mark.parametrize("case", ["molecules", "periodic_ewald"])
def test_streaming_batches_equal_in_memory_batches(case, ethanol_h5, tmp_path):
    if case == "molecules":
        path, cutoff, options = ethanol_h5, 5.0, {}  # pair counts stored
        idx = np.arange(0, 800, 7)
    else:  # counted by a pass: other cutoff, long-range pairs and Ewald k-vectors
        path = tmp_path / "cu.h5"
        convert(shipped_dataset_path("cu_emt"), path, cutoff=4.0)
        cutoff = 3.0
        options = PhysicalTerms.from_config(ModelConfig(
            electrostatics=True, long_range_cutoff=5.0, cutoff=cutoff)).graph_options()
        idx = np.flatnonzero(HDF5Dataset(path).n_atoms <= 32)[::3]
    disk = HDF5Dataset(path).subset(idx)
    memory = GraphDataset(disk.load(), cutoff, 4, 3, np.float64, **options)
    stream = StreamingGraphDataset(disk, cutoff, 4, 3, np.float64, **options, chunk_size=50)
    assert stream.ladder == memory.ladder and stream.pair_halves and memory.pair_halves
    order = np.random.default_rng(1).permutation(len(idx))
    n = 0
    for (g, lab), (gs, labs) in zip(memory.batches(order), stream.batches(order), strict=True):
        for x, y in zip(jax_leaves((g, lab)), jax_leaves((gs, labs)), strict=True):
            np.testing.assert_array_equal(x, y)
        n += 1
    assert n == stream.num_batches() == memory.num_batches()
    if case == "periodic_ewald":
        assert gs.ewald is not None and gs.long_range is not None


def test_streaming_epoch_visits_every_structure_once_and_resumes(ethanol_h5):
    data = HDF5Dataset(ethanol_h5)
    train = data.subset(np.random.default_rng(0).permutation(len(data))[:103])
    energies = data.load().energy[train.indices]
    graphs = StreamingGraphDataset(train, 5.0, 4, prefetch=2)
    for epoch in range(2):
        order = _epoch_order(7, epoch, len(train))
        seen = []
        for graph, labels in graphs.batches(order):
            seen.extend(labels.energy[labels.energy_mask])
        assert len(seen) == len(train)  # every structure once, in the epoch's order
        np.testing.assert_array_equal(seen, energies[order])
    assert not np.array_equal(_epoch_order(7, 0, 103), _epoch_order(7, 1, 103))
    # resuming at batch 11 of the epoch gives the rest of the epoch's batches
    order = _epoch_order(7, 1, len(train))
    tail = [labels.energy[labels.energy_mask] for _, labels in graphs.batches(order, start=11)]
    np.testing.assert_array_equal(np.concatenate(tail), energies[order[44:]])
    # a loop left early stops the prefetch thread
    for _ in graphs.batches(order):
        break
    assert not [t for t in threading.enumerate() if t.name == "so3krates-prefetch"]


def test_prefetch_keeps_order_and_raises_where_the_source_failed():
    def source():
        yield from range(5)
        raise DataError("structure 5: broken")

    got = []
    with pytest.raises(DataError, match="structure 5"):
        for x in prefetch(source(), size=2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


def test_sharded_batches_read_from_disk(tmp_path):
    """sharded_batches' interface (capacity_of, batch(capacity=...), ladder, batch_size) on
    the disk-backed batches: a mesh of one device gives the in-memory batches."""
    from so3krates.training.sharding import device_mesh, sharded_batches

    data = read_dataset(shipped_dataset_path()).subset(np.arange(11))
    write_hdf5([data], tmp_path / "d.h5", "test")
    order = np.random.default_rng(0).permutation(11)
    whole = GraphDataset(data, 5.0, 4)
    stream = StreamingGraphDataset(HDF5Dataset(tmp_path / "d.h5"), 5.0, 4)
    for (g, _), (gs, _) in zip(whole.batches(order), sharded_batches(stream, device_mesh(1), order),
                               strict=True):
        assert gs.positions.shape == (1, *g.positions.shape)
        np.testing.assert_array_equal(np.asarray(gs.positions[0]), g.positions)


OOC_TRAIN = [*TINY_TRAIN, "data.n_train=40", "data.n_valid=10", "model.dtype=float64",
             "model.output_init=lecun_normal", "training.learning_rate=3e-3",
             "training.valid_every=5", "training.buckets=1"]


def test_out_of_core_training_equals_in_memory_and_resumes(ethanol_h5, tmp_path):
    """float64, 25 steps of 10 batches per epoch: the run from the HDF5 file, stopped at step
    15 (mid-epoch 1) and resumed, ends with the parameters of the in-memory run."""
    memory = train(load_config(None, [f"data.path={shipped_dataset_path()}", *OOC_TRAIN,
                                      "training.max_steps=25"]), tmp_path / "memory")
    disk = [f"data.path={ethanol_h5}", *OOC_TRAIN]
    first = train(load_config(None, [*disk, "training.max_steps=15"]), tmp_path / "disk")
    resumed = train(load_config(None, [*disk, "training.max_steps=25"]), tmp_path / "disk")
    assert first.steps == 15 and resumed.resumed_from_step == 15 and resumed.steps == memory.steps == 25

    def state(run):
        return serialization.msgpack_restore((tmp_path / run / "checkpoints" / "latest.msgpack"
                                              ).read_bytes())

    a, b = state("memory"), state("disk")
    start = serialization.msgpack_restore((tmp_path / "memory" / "params.msgpack").read_bytes())
    assert np.abs(a["params"] - np.concatenate([x.ravel() for x in jax_leaves(start)])).max() > 1e-3
    for key in ("params", "ema"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-9, atol=1e-12)


def test_cli_convert_and_train_errors_are_one_line(capsys, tmp_path, ethanol_h5):
    code, text = cli(capsys, "convert", str(shipped_dataset_path()), str(tmp_path / "e.h5"),
                     "--chunk-size", "500")
    assert code == 0 and "800 structures" in text and len(HDF5Dataset(tmp_path / "e.h5")) == 800
    assert_one_line_error(*cli(capsys, "convert", str(tmp_path / "nope.xyz"), str(tmp_path / "x.h5")),
                          "no such file")
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_text("3\nnot a comment line\nH 0 0\n")
    assert_one_line_error(*cli(capsys, "convert", str(garbage), str(tmp_path / "x.h5")),
                          "ASE could not read")
    assert_one_line_error(*cli(capsys, "convert", str(ethanol_h5), str(tmp_path / "x.h5")),
                          "an HDF5 file already")
    assert_one_line_error(*cli(capsys, "convert", str(shipped_dataset_path()), str(tmp_path / "x.xyz")),
                          "must end in .h5")
    assert not (tmp_path / "x.h5").exists()

    run = str(tmp_path / "run")
    assert_one_line_error(*cli(capsys, "train", "--data", str(tmp_path / "nope.h5"), "--output", run),
                          "no such file")
    not_hdf5 = tmp_path / "text.h5"
    not_hdf5.write_text("hello")
    assert_one_line_error(*cli(capsys, "train", "--data", str(not_hdf5), "--output", run),
                          "not a readable HDF5 file")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["x"] = np.zeros(3)
    assert_one_line_error(*cli(capsys, "train", "--data", str(other), "--output", run),
                          "not a so3krates dataset")
    future = tmp_path / "future.h5"
    future.write_bytes((tmp_path / "e.h5").read_bytes())
    with h5py.File(future, "a") as h5:
        h5.attrs["version"] = VERSION + 1
    assert_one_line_error(*cli(capsys, "train", "--data", str(future), "--output", run),
                          f"format version {VERSION + 1}")
    assert_one_line_error(*cli(capsys, "train", "--data", str(ethanol_h5), "--output", run,
                               "--set", "data.energy_unit=meV"), "data.energy_unit applies")


def test_kill_during_convert_leaves_no_partial_file(tmp_path):
    out = tmp_path / "ethanol.h5"
    args = [sys.executable, "-m", "so3krates.cli", "convert", str(shipped_dataset_path()), str(out),
            "--chunk-size", "200"]
    killed = subprocess.run(args, capture_output=True, text=True,
                            env={**os.environ, "SO3KRATES_KILL_AFTER_CHUNK": "2"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert not out.exists()
    leftovers = list(tmp_path.glob(".ethanol.h5.*.tmp"))  # the hidden temporary file only
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0
    # an earlier complete file survives a killed conversion to its name
    convert(shipped_dataset_path(), out, chunk_size=400)
    before = out.read_bytes()
    killed = subprocess.run(args, capture_output=True, text=True,
                            env={**os.environ, "SO3KRATES_KILL_AFTER_CHUNK": "1"})
    assert killed.returncode == -9 and out.read_bytes() == before and len(HDF5Dataset(out)) == 800
