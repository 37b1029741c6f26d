"""Fault catalogue, physical terms: what a model's long-range terms cannot do with the data
is refused before training starts, in one readable line (see test_faults.py for the rest)."""

from __future__ import annotations

import numpy as np
from fault_helpers import assert_error, cli, ethanol, labelled, write


def test_train_dispersion_without_free_atom_data(capsys, tmp_path):
    """Learned dispersion needs free-atom data for every element: refused before training,
    not NaN energies inside it."""
    frames = [labelled(ethanol()) for _ in range(3)]
    frames[1].numbers[0] = 32  # germanium: no Tkatchenko-Scheffler data in ASE's table
    path = write(tmp_path / "ge.xyz", frames)
    assert_error(cli(capsys, "train", "--data", path, "--set", "model.dispersion=learned",
                     "--output", tmp_path / "m"),
                 "no Tkatchenko-Scheffler free-atom data for Ge (Z=32)")


def test_train_periodic_electrostatics_without_cutoff_or_of_a_slab(capsys, tmp_path):
    slab = ethanol()
    slab.cell, slab.pbc = np.eye(3) * 12.0, [True, True, False]
    path = write(tmp_path / "slab.xyz", [labelled(slab)] * 2)
    assert_error(cli(capsys, "train", "--data", path, "--set", "model.electrostatics=true",
                     "--set", "model.long_range_cutoff=8", "--output", tmp_path / "m"),
                 "slabs, wires")
    slab.pbc = True
    path = write(tmp_path / "box.xyz", [labelled(slab)] * 2)
    assert_error(cli(capsys, "train", "--data", path, "--set", "model.electrostatics=true",
                     "--output", tmp_path / "m"),
                 "needs model.long_range_cutoff")


def test_train_d3_with_an_unknown_functional(capsys, tmp_path):
    path = write(tmp_path / "e.xyz", [labelled(ethanol()) for _ in range(3)])
    assert_error(cli(capsys, "train", "--data", path, "--set", "model.dispersion=d3",
                     "--set", "model.d3_functional=pbe7", "--output", tmp_path / "m"),
                 "no D3(BJ) parameters for functional 'pbe7'")
