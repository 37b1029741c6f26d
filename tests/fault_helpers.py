"""Simulated faults shared by the tests."""

from __future__ import annotations

import errno
import os


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
