"""Simulated faults and the fault catalogue's helpers, shared by the tests."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from so3krates.cli import main
from so3krates.datasets import shipped_dataset_path


class FullDisk:
    """Stands in for ``os.fdopen`` in ``so3krates.fileio``: the file opens, every write fails
    with ENOSPC (what a full disk does to the atomic writes of checkpoints, models, restart
    files and truncated trajectories)."""

    real_fdopen = os.fdopen

    def __init__(self, fd, mode):
        self.fh = FullDisk.real_fdopen(fd, mode)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def cli(capsys, *argv) -> tuple[int, str]:
    """Run ``so3krates ARGV`` in-process: ``(exit code, everything printed)``."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def assert_error(result: tuple[int, str], *words: str, code: int = 2) -> str:
    """Exit ``code``, exactly one ``error:`` line holding ``words``, no traceback; returns the
    line."""
    got, out = result
    assert got == code, out
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out
    assert "Traceback" not in out and "File \"" not in out, out
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def labelled(atoms: Atoms, energy: float = 0.0, forces=None) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, energy=energy,
                                       forces=np.zeros((len(atoms), 3)) if forces is None else forces)
    return atoms


def ethanol() -> Atoms:
    return ase.io.read(shipped_dataset_path(), index=0)


def write(path: Path, frames) -> Path:
    ase.io.write(path, frames, format="extxyz")
    return path


def assert_one_line_error(code: int, text: str, match: str) -> None:
    """Exit code 2 and the whole output one ``error:`` line holding ``match``."""
    lines = text.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), text
    assert match in lines[0], text
