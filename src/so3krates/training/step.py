"""One optimisation step: loss and gradients of a batch, the optimiser update, the EMA; in one
process (:func:`make_train_step`) or across the processes of a data-parallel run
(:class:`DataParallelStep`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from so3krates.compile import jit
from so3krates.config import TrainingConfig
from so3krates.training.data_parallel import GradientExchange
from so3krates.training.loss import energy_forces_loss, huber_delta


def flat_training_state(predict, params):
    """The layout the training loop keeps: ``(flat, flat_predict, unravel)``.

    Parameters (and so the EMA and the optimiser moments built from them) become one flat
    vector; ``flat_predict(flat, graph)`` is ``predict(unravel(flat), graph)``. The update is
    then a handful of kernels instead of a few per parameter array (on 2 CPU cores the
    per-array update took 1.6 of the 11.6 ms of an aspirin training step).
    """
    flat, unravel = ravel_pytree(params)
    return flat, (lambda p, graph: predict(unravel(p), graph)), unravel


def loss_and_gradients(predict, tcfg: TrainingConfig) -> Callable:
    """``f(params, graph, labels) -> (loss, grads)``: the weighted energy/force loss of
    ``predict(params, graph)`` (see ``energy_forces_loss``) and its gradient."""

    def f(params, graph, labels):
        def loss_fn(p):
            return energy_forces_loss(predict(p, graph), labels, tcfg.energy_weight,
                                      tcfg.forces_weight, huber_delta(tcfg),
                                      tcfg.stress_weight or 0.0, tcfg.dipole_weight or 0.0,
                                      tcfg.charges_weight or 0.0)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads

    return f


def update(optimizer: optax.GradientTransformation, tcfg: TrainingConfig) -> Callable:
    """``f(params, opt_state, ema, grads) -> (params, opt_state, ema)``: an ``optimizer``
    update and the exponential moving average of the parameters."""
    ema_decay = tcfg.ema_decay or 0.0

    def f(params, opt_state, ema, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        return params, opt_state, ema

    return f


def copy_state(state):
    """A copy of a training state (any pytree of arrays) that outlives the steps it is passed
    to: the steps take over (donate) the arrays of the state they are given."""
    return jax.tree.map(jnp.copy, state)


# The steps update the training state in place: XLA writes the new parameters, moments and EMA
# into the buffers of the old ones (on 2 CPU cores, 495,083 parameters: 0.80 -> 0.60 ms per
# update), so the arrays passed in are deleted.
DONATE_STATE = (0, 1, 2)


def make_train_step(predict, optimizer: optax.GradientTransformation, tcfg: TrainingConfig):
    """One jitted optimisation step on a batch.

    ``train_step(params, opt_state, ema, graph, labels) -> (params, opt_state, ema, loss)``:
    :func:`loss_and_gradients`, then :func:`update`. The arrays of ``params``, ``opt_state``
    and ``ema`` are donated (deleted by the call; see :func:`copy_state`), so they must be
    distinct arrays.
    """
    grad_fn, update_fn = loss_and_gradients(predict, tcfg), update(optimizer, tcfg)

    @jit(donate_argnums=DONATE_STATE)
    def train_step(params, opt_state, ema, graph, labels):
        loss, grads = grad_fn(params, graph, labels)
        return (*update_fn(params, opt_state, ema, grads), loss)

    return train_step


# Layout of the row each process contributes to a data-parallel step (after the gradient).
_LOSS, _WEIGHT, _CHECKSUM, _CLOCK, _TAIL = range(5)


class DataParallelStep:
    """The optimisation step of one process of a data-parallel run (flat parameters).

    Each process computes the loss gradient of its share of the batch; the gradients are
    averaged over the processes, weighted by their number of structures (a share can be
    smaller, or empty, at the end of an epoch), and every process applies the same update
    to its copy of the state. Called like :func:`make_train_step`'s step (which donates the
    state arrays passed in). :meth:`clock` is
    rank 0's ``clock()`` reading at the last step (this process's own before the first), so
    that every process takes the same time-based decisions (budget, decay horizon).

    Raises RuntimeError if the processes' parameters ever differ.
    """

    def __init__(self, predict, optimizer: optax.GradientTransformation, tcfg: TrainingConfig,
                 exchange: GradientExchange, n_params: int, dtype, clock: Callable[[], float]):
        grad_fn, update_fn = loss_and_gradients(predict, tcfg), update(optimizer, tcfg)
        self.exchange, self.local_clock, self.n = exchange, clock, n_params
        self.elapsed: float | None = None  # rank 0's clock at the last step
        exchange.open(n_params + _TAIL, dtype)

        @jit
        def local_row(params, graph, labels, clock):
            loss, grads = grad_fn(params, graph, labels)
            w = jnp.sum(graph.structure_mask).astype(grads.dtype)
            tail = jnp.stack([w * loss, w, jnp.sum(params), clock]).astype(grads.dtype)
            return jnp.concatenate([w * grads, tail])

        @jit(donate_argnums=DONATE_STATE)
        def apply(params, opt_state, ema, total):
            return update_fn(params, opt_state, ema, total[:n_params] / total[n_params + _WEIGHT])

        self._local_row, self._apply = local_row, apply

    def __call__(self, params, opt_state, ema, graph, labels):
        n = self.n
        row = self._local_row(params, graph, labels, self.local_clock())
        rows = self.exchange.gather(np.asarray(row))
        checksums = rows[:, n + _CHECKSUM]
        if not np.array_equal(checksums, np.full_like(checksums, checksums[0]), equal_nan=True):
            raise RuntimeError(f"the data-parallel processes' parameters differ (checksums "
                               f"{checksums.tolist()}); stopping")
        self.elapsed = float(rows[0, n + _CLOCK])
        total = rows[:, : n + _CHECKSUM].sum(axis=0)  # the same sum, in the same order, everywhere
        params, opt_state, ema = self._apply(params, opt_state, ema, total)
        return params, opt_state, ema, total[n + _LOSS] / total[n + _WEIGHT]

    def clock(self) -> float:
        """Seconds as rank 0 measured them at the last step (before it: this process's)."""
        return self.local_clock() if self.elapsed is None else self.elapsed
