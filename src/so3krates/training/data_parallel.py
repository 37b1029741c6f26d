"""Data parallelism over CPU cores: one training process per core, gradients summed in shared
memory.

A training step of one small molecule gives XLA:CPU too little work for a second thread: on
the 2-core development machine a step of 2 aspirins took 35-41 ms in one process, whether
XLA ran one thread or two, and 16.7 ms for 1 aspirin on one pinned thread. Two processes,
each pinned to its own core with one aspirin, do a step of 2 in 21.6 ms with their gradients
summed through shared memory, and in 30.7 ms with JAX's own multi-process all-reduce
(``jax.distributed`` with gloo over TCP: about 10 ms for the 2 MB of gradients). Hence this
module: :func:`run_data_parallel` starts the processes and watches them,
:class:`GradientExchange` is their one collective (an all-gather through a memory-mapped
file, one barrier per call).

Every process keeps the full training state and applies the same update to it, so the
processes stay bit-identical; the trainer checks that at every step.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

EXCHANGE_FILE = "exchange.bin"


class DataParallelError(RuntimeError):
    """A process of a data-parallel run died (killed, out of memory) without an exception."""


class GradientExchange:
    """The collective of the processes of one data-parallel run: :meth:`gather` hands every
    process the rows all processes passed in.

    Rows live in a memory-mapped file of two slots (alternate calls use alternate slots), so
    one barrier per call suffices: a process writes a slot again only two calls later, after
    every process has passed the barrier of the call in between, i.e. has finished reading it.

    Args:
        rank: this process's index, ``0 <= rank < size``; rank 0 writes the run's files.
        size: number of processes.
        barrier: a ``multiprocessing.Barrier(size)`` shared by the processes.
        directory: a directory all processes see (preferably in ``/dev/shm``).
    """

    def __init__(self, rank: int, size: int, barrier, directory: str | os.PathLike):
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} outside 0..{size - 1}")
        self.rank, self.size = rank, size
        self._barrier = barrier
        self._path = Path(directory) / EXCHANGE_FILE
        self._buf: np.ndarray | None = None
        self._calls = 0

    def open(self, length: int, dtype: Any) -> None:
        """Allocate room for rows of ``length`` elements of ``dtype``; collective (every process
        calls it with the same arguments)."""
        shape = (2, self.size, length)
        if self.rank == 0:
            with open(self._path, "wb") as fh:
                fh.truncate(int(np.prod(shape)) * np.dtype(dtype).itemsize)
        self.barrier()
        self._buf = np.memmap(self._path, dtype=dtype, mode="r+", shape=shape)
        self.barrier()
        if self.rank == 0:  # the mappings stay; nothing is left behind if all are killed
            self._path.unlink()

    def gather(self, row: np.ndarray) -> np.ndarray:
        """Every process's ``row``, stacked in rank order: ``(size, length)``.

        The result is a view of shared memory, valid until this process's next call.
        """
        if self._buf is None:
            raise RuntimeError("GradientExchange.open() has not been called")
        slot = self._buf[self._calls % 2]
        self._calls += 1
        slot[self.rank] = row
        self.barrier()
        return slot

    def barrier(self) -> None:
        """Wait for all processes (``threading.BrokenBarrierError`` if one of them failed)."""
        self._barrier.wait()

    def abort(self) -> None:
        """Release the other processes from the barrier with ``BrokenBarrierError``."""
        self._barrier.abort()

    def close(self) -> None:
        self._buf = None


def available_cores() -> list[int]:
    """The CPU cores this process may run on (empty where the platform does not say)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def core_groups(size: int, cores: Sequence[int] | None = None) -> list[list[int]]:
    """Split the CPU cores available to this process (or ``cores``) into ``size`` disjoint
    groups, as evenly as possible; with fewer cores than processes, cores are shared."""
    cores = available_cores() if cores is None else list(cores)
    if not cores:
        return [[] for _ in range(size)]
    if len(cores) < size:
        return [[cores[r % len(cores)]] for r in range(size)]
    return [[int(c) for c in g] for g in np.array_split(np.asarray(cores), size)]


def _die_with_parent(parent: int) -> None:
    # A `kill -9` of the launching process must not leave its workers training: a rerun of the
    # same command would then resume into a directory they are still writing.
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _worker(rank: int, size: int, cores: list[int], parent: int, barrier, directory: str,
            target: Callable, args: tuple, kwargs: dict, results) -> None:
    _die_with_parent(parent)
    exchange = GradientExchange(rank, size, barrier, directory)
    try:
        if len(cores) == 1:
            from so3krates.compile import use_one_cpu_thread

            use_one_cpu_thread(core=cores[0])
        elif cores:
            os.sched_setaffinity(0, cores)
        result = target(*args, exchange=exchange, **kwargs)
    except threading.BrokenBarrierError:
        os._exit(3)  # another process failed; it reports why
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which re-raises
        exchange.abort()
        results.put((rank, err))
        return
    finally:
        exchange.close()
    if rank == 0:
        results.put((rank, result))


def run_data_parallel(target: Callable, size: int, args: tuple = (), kwargs: dict | None = None,
                      cores: Sequence[int] | None = None) -> Any:
    """Run ``target(*args, exchange=GradientExchange(rank, size, ...), **kwargs)`` in ``size``
    new processes, each pinned to its own group of CPU cores (one core: XLA computes on one
    thread), and return rank 0's result.

    ``target`` and its arguments must be picklable (a module-level function). An exception in
    any process stops the others and is raised here; a process killed by a signal raises
    :class:`DataParallelError`. The processes die with this one.
    """
    if size < 1:
        raise ValueError(f"need at least one process, not {size}")
    ctx = mp.get_context("spawn")  # a fresh interpreter: XLA's thread flags must precede JAX
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    directory = tempfile.mkdtemp(prefix="so3krates-data-parallel-", dir=shm)
    barrier, results = ctx.Barrier(size), ctx.SimpleQueue()
    groups = core_groups(size, cores)
    procs = [
        ctx.Process(target=_worker, name=f"so3krates-train-{r}",
                    args=(r, size, groups[r], os.getpid(), barrier, directory, target, args,
                          kwargs or {}, results))
        for r in range(size)
    ]
    try:
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(0.2)
                if p.exitcode not in (None, 0):
                    barrier.abort()  # a crashed or killed process: release the others
        outcome: dict[int, Any] = {}
        while not results.empty():
            rank, value = results.get()
            outcome[rank] = value
        errors = [v for v in outcome.values() if isinstance(v, BaseException)]
        if errors:
            raise errors[0]
        killed = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (0, 3)]
        if killed or 0 not in outcome:
            raise DataParallelError(
                "data-parallel training stopped: "
                + ", ".join(f"process {r} exited with code {c}" for r, c in killed or
                            [(r, p.exitcode) for r, p in enumerate(procs)])
            )
        return outcome[0]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        shutil.rmtree(directory, ignore_errors=True)
