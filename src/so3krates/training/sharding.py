"""Data-parallel training with ``jax.sharding``: a one-axis device mesh, every global batch
split into equal shares along it, parameters and optimiser state replicated.

One process drives all its devices (GPUs, or CPU cores made into JAX CPU devices with
:func:`use_cpu_devices` before JAX starts); several hosts join with
``jax.distributed.initialize`` (:func:`start_distributed`) and each feeds the shares of its
own devices. The step (:class:`ShardedStep`) computes each share's loss gradient
on its device and sums them over the mesh (``psum``), weighted by the share's number of
structures, so the update is the gradient of the whole batch: a run on N devices equals one
on one device up to the order of floating-point sums, and a checkpoint resumes on any number
of devices.

Shares must have one shape to form one array: :func:`sharded_batches` pads all shares of a
batch to the largest capacity any of them needs (from the same few buckets, so nothing new
compiles).
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from so3krates.batching import GraphDataset
from so3krates.compile import backends_started, jit
from so3krates.config import TrainingConfig
from so3krates.training.step import DONATE_STATE, loss_and_gradients, update

AXIS = "data"


def use_cpu_devices(n: int) -> None:
    """Make JAX's CPU backend show ``n`` devices in this process (one per core to train on).

    Must run before JAX's first computation (JAX reads it when it starts its backends); later
    it raises RuntimeError, unless the CPU backend already has ``n`` devices.
    """
    if n < 1:
        raise ValueError(f"need at least one device, not {n}")
    if backends_started():
        have = len(jax.devices("cpu"))
        if have != n:
            raise RuntimeError(f"JAX started with {have} CPU device(s); use_cpu_devices({n}) "
                               f"must run before JAX's first computation")
        return
    jax.config.update("jax_num_cpu_devices", n)


def start_distributed(coordinator: str | None = None, num_hosts: int | None = None,
                      host_id: int | None = None) -> None:
    """Join a multi-host run (``jax.distributed.initialize``); without arguments JAX detects
    the cluster (SLURM, Open MPI, Kubernetes...). CPU hosts exchange gradients over gloo."""
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_hosts,
                               process_id=host_id)


def device_mesh(n: int) -> Mesh:
    """A one-axis mesh (``"data"``) over the first ``n`` devices of the default backend (all
    hosts' devices in a multi-host run). Raises ValueError if there are fewer."""
    devices = jax.devices()
    if n > len(devices):
        hint = (" (on a CPU: so3krates train --devices N makes N CPU devices; from Python call "
                "so3krates.training.sharding.use_cpu_devices(N) before JAX computes anything)"
                if jax.default_backend() == "cpu" else "")
        raise ValueError(f"training.devices={n}, but JAX sees {len(devices)} "
                         f"{jax.default_backend()} device(s){hint}")
    return Mesh(np.asarray(devices[:n]), (AXIS,))


def replicate(tree, mesh: Mesh):
    """``tree`` (arrays) as arrays replicated on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def local_copy(tree):
    """A replicated state's arrays as single-device arrays of this process (for validation and
    checkpoints: every device holds the same values)."""
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def local_shares(mesh: Mesh) -> list[int]:
    """Indices (along the mesh axis) of the shares this process's devices compute."""
    mine = {d.id for d in jax.local_devices()}
    return [i for i, d in enumerate(mesh.devices.flat) if d.id in mine]


def sharded_batches(graphs: GraphDataset, mesh: Mesh, order: Sequence[int],
                    start: int = 0) -> Iterator[tuple]:
    """Yield the global batches of an epoch from chunk ``start`` as ``(graph, labels)`` whose
    arrays have a leading axis of one share per device, sharded over ``mesh``.

    Chunks of ``n_devices * graphs.batch_size`` structures of ``order``, as
    :meth:`GraphDataset.batches` with ``shard=``; shares at the end of an epoch may be short
    or empty. Every process computes the same capacity for a chunk (from the structures of all
    its shares), so the shares of all hosts fit one array.
    """
    size = mesh.devices.size
    mine = local_shares(mesh)
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    order = np.asarray(order)
    chunk = size * graphs.batch_size
    for s in range(start * chunk, len(order), chunk):
        shares = [order[s + r * graphs.batch_size: min(s + (r + 1) * graphs.batch_size, s + chunk)]
                  for r in range(size)]
        capacity = max((graphs.capacity_of(idx) for idx in shares), key=graphs.ladder.index)
        local = [graphs.batch(shares[r], capacity=capacity) for r in mine]
        stacked = jax.tree.map(lambda *xs: np.stack(xs), *local)
        yield jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), stacked)


class ShardedStep:
    """The optimisation step of a batch sharded over ``mesh`` (see :func:`sharded_batches`),
    called like :func:`~so3krates.training.step.make_train_step`'s step (it donates the state
    arrays passed in; the state must be replicated over ``mesh``, see :func:`replicate`).

    Every share's loss gradient is computed on its device and the gradients are summed over
    the mesh weighted by the shares' numbers of structures (a share can be short, or empty,
    at the end of an epoch): the gradient of the whole batch. Then every device applies the
    same update to its copy of the state. :meth:`clock` is the largest ``clock()`` reading of
    all hosts at the last step, so that they take the same time-based decisions (budget,
    decay horizon); in one process it is ``clock()`` itself (no wait for the step).
    """

    def __init__(self, predict, optimizer: optax.GradientTransformation, tcfg: TrainingConfig,
                 mesh: Mesh, clock: Callable[[], float]):
        grad_fn, update_fn = loss_and_gradients(predict, tcfg), update(optimizer, tcfg)
        self.mesh, self.local_clock = mesh, clock
        self._agreed: jax.Array | None = None
        self._hosts = jax.process_count()

        def share(params, graph, labels, clock):
            graph, labels = jax.tree.map(lambda x: x[0], (graph, labels))  # this device's share
            loss, grads = grad_fn(params, graph, labels)
            w = jnp.sum(graph.structure_mask).astype(jax.tree.leaves(grads)[0].dtype)
            total = jax.lax.psum((jax.tree.map(lambda g: w * g, grads), w * loss, w), AXIS)
            return total, jax.lax.pmax(clock[0], AXIS)

        spec, rep = PartitionSpec(AXIS), PartitionSpec()
        # Without the replication checks: with them, the gradient of the replicated parameters
        # inside the body is already summed over the mesh (the transpose of their implicit
        # broadcast), unweighted, and the psum above would add it up a second time.
        sharded = jax.shard_map(share, mesh=mesh, in_specs=(rep, spec, spec, spec),
                                out_specs=((rep, rep, rep), rep), check_vma=False)

        @jit(donate_argnums=DONATE_STATE)
        def step(params, opt_state, ema, graph, labels, clock):
            (grads, loss, weight), agreed = sharded(params, graph, labels, clock)
            grads = jax.tree.map(lambda g: g / weight, grads)
            return (*update_fn(params, opt_state, ema, grads), loss / weight, agreed)

        self._step = step
        self._clock_sharding = NamedSharding(mesh, spec)
        self._n_local = len(local_shares(mesh))

    def __call__(self, params, opt_state, ema, graph, labels):
        now = np.full(self._n_local, self.local_clock(), dtype=np.float64)
        clock = jax.make_array_from_process_local_data(self._clock_sharding, now)
        params, opt_state, ema, loss, self._agreed = self._step(params, opt_state, ema, graph,
                                                                labels, clock)
        return params, opt_state, ema, loss

    def clock(self) -> float:
        """Seconds: this process's clock; with several hosts the agreed one of the last step."""
        if self._hosts == 1 or self._agreed is None:
            return self.local_clock()
        return float(self._agreed)
