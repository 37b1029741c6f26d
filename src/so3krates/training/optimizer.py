"""Optimiser: gradient clipping, Adam/AMSGrad, decoupled weight decay, warm-up + exponential or
cosine decay, plateau factor.

The learning rate is ``lr * warmup(step) * decay(t)`` with ``t = (step - warmup) / horizon``:
``decay_rate ** t`` (exponential) or ``decay_rate + (1 - decay_rate) (1 + cos(pi min(t, 1))) / 2``
(cosine: from 1 down to ``decay_rate`` at the horizon, then constant). The
decay horizon lives in the optimiser state (and so in every checkpoint): with
``decay_steps: budget`` the trainer sets it to the number of steps the run will take, from
its step limit and, under a wall-clock budget, from the measured step rate
(:func:`set_decay_horizon`), so that the decay is complete when the budget runs out.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from so3krates.config import TrainingConfig


class DecayState(NamedTuple):
    """Step count and decay horizon (in steps) of the learning-rate schedule."""

    count: jnp.ndarray
    horizon: jnp.ndarray


def learning_rate(cfg: TrainingConfig, step, horizon):
    """Learning rate at ``step`` for a decay over ``horizon`` steps (before the plateau factor)."""
    step = jnp.asarray(step, jnp.float32)
    warm = cfg.warmup_steps
    ramp = 1.0 if warm == 0 else jnp.minimum(0.01 + 0.99 * step / warm, 1.0)
    if cfg.schedule == "constant":
        return cfg.learning_rate * ramp
    t = jnp.maximum(step - warm, 0.0) / jnp.asarray(horizon, jnp.float32)
    if cfg.schedule == "cosine":
        half_cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t, 1.0)))  # 1 -> 0, then 0
        decay = cfg.decay_rate + (1.0 - cfg.decay_rate) * half_cosine
    else:
        decay = cfg.decay_rate**t
    return cfg.learning_rate * ramp * decay


def initial_horizon(cfg: TrainingConfig, step_limit: int) -> int:
    """``decay_steps``, or for ``budget`` the run's step limit (see :func:`set_decay_horizon`)."""
    return step_limit if cfg.decay_steps == "budget" else int(cfg.decay_steps)


def budget_horizon(
    step: int, anchor: tuple[int, float], now: float, remaining_s: float, step_limit: int
) -> float | None:
    """Steps a run will have taken when its wall-clock budget ends: ``step`` plus what
    ``remaining_s`` seconds hold at the rate measured since ``anchor`` = (step, time), at most
    ``step_limit``; None before a rate can be measured."""
    steps, elapsed = step - anchor[0], now - anchor[1]
    if steps <= 0 or elapsed <= 0:
        return None
    return min(float(step_limit), step + steps / elapsed * max(remaining_s, 0.0))


def scale_by_decayed_learning_rate(cfg: TrainingConfig, horizon: int) -> optax.GradientTransformation:
    """``updates * -learning_rate(step)``, with the decay horizon kept in the state."""

    def init(params):
        del params
        return DecayState(jnp.zeros([], jnp.int32), jnp.asarray(max(horizon, 1), jnp.float32))

    def update(updates, state, params=None):
        del params
        lr = learning_rate(cfg, state.count, state.horizon)
        updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
        return updates, DecayState(state.count + 1, state.horizon)

    return optax.GradientTransformation(init, update)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` (updates scaled by ``max_norm / norm`` when their global
    norm exceeds ``max_norm``), with the norm computed by dot products: XLA:CPU turns
    optax's ``sum(g * g)`` into a slow reduction loop. For the 495,083 parameters of the
    aspirin benchmark's model the whole optimiser update took 0.391 instead of 0.470 ms
    (one core)."""

    def update(updates, state, params=None):
        del params
        leaves = jax.tree.leaves(updates)
        norm = jnp.sqrt(sum(jnp.vdot(leaf, leaf) for leaf in leaves))
        scale = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return jax.tree.map(lambda u: u * scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


# Parameter names (last path key) that weight decay leaves alone: shifting or scaling them
# does not make the network steeper, and pulling them to zero would bias the energies.
NOT_DECAYED = ("embedding", "scale", "element_scale", "element_shift")


def weight_decay_mask(params, flat: bool = False):
    """A pytree like ``params`` with 1.0 on the weight matrices and 0.0 elsewhere (any leaf
    whose name contains "bias", and embeddings, LayerNorm and per-element scales/shifts);
    with ``flat``, that pytree raveled into one vector in the order of
    ``jax.flatten_util.ravel_pytree(params)`` (the trainer's flat layout, what
    :func:`make_optimizer` takes)."""

    def mask(path, leaf):
        name = str(getattr(path[-1], "key", path[-1])) if path else ""
        keep = "bias" in name or name in NOT_DECAYED
        return jnp.full(jnp.shape(leaf), 0.0 if keep else 1.0, jnp.result_type(leaf))

    tree = jax.tree_util.tree_map_with_path(mask, params)
    return ravel_pytree(tree)[0] if flat else tree


def make_optimizer(
    cfg: TrainingConfig, horizon: int, decay_mask=None
) -> optax.GradientTransformation:
    """The configured optimiser, decaying over ``horizon`` steps (see :func:`initial_horizon`).

    ``decay_mask`` (``weight_decay_mask(params, flat=True)``, for the flat layout the trainer
    keeps) selects the weights that ``cfg.weight_decay`` applies to (AdamW's decoupled decay,
    before the learning rate scales it); it is required when the decay is not zero. Why decay:
    Adam moves every weight by about the learning rate per step however small its gradient,
    so weights that the data hardly use drift and the network grows steep outside the data.
    Its state ends with the decay state and the reduce-on-plateau factor (``plateau_factor`` /
    :func:`set_plateau_factor`), so that both are checkpointed with the rest.
    """
    by = optax.scale_by_amsgrad if cfg.optimizer == "amsgrad" else optax.scale_by_adam
    scale = by(b2=cfg.adam_b2)
    decay = []
    if cfg.weight_decay:
        if decay_mask is None:
            raise ValueError("training.weight_decay > 0 needs a decay_mask (weight_decay_mask)")
        decay = [optax.add_decayed_weights(cfg.weight_decay * decay_mask)]
    return optax.chain(
        clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip else optax.identity(),
        scale,
        *decay,
        scale_by_decayed_learning_rate(cfg, horizon),
        optax.inject_hyperparams(optax.scale)(step_size=1.0),
    )


def _chain(opt_state):
    """The state of :func:`make_optimizer`'s chain: ``opt_state`` itself, or inside the
    ``optax.multi_transform`` of a run with frozen parameters
    (``so3krates.training.freezing.freezing_optimizer``), its trainable part's."""
    if hasattr(opt_state, "inner_states"):
        from so3krates.training.freezing import TRAINABLE

        return opt_state.inner_states[TRAINABLE].inner_state
    return opt_state


def _with_chain(opt_state, chain):
    """A copy of ``opt_state`` whose chain state (see :func:`_chain`) is ``chain``."""
    if hasattr(opt_state, "inner_states"):
        from so3krates.training.freezing import TRAINABLE

        inner = dict(opt_state.inner_states)
        inner[TRAINABLE] = inner[TRAINABLE]._replace(inner_state=tuple(chain))
        return opt_state._replace(inner_states=inner)
    return tuple(chain)


def plateau_factor(opt_state) -> float:
    """Current reduce-on-plateau multiplier of the learning rate."""
    return float(_chain(opt_state)[-1].hyperparams["step_size"])


def set_plateau_factor(opt_state, factor: float):
    """A copy of ``opt_state`` with the plateau multiplier set to ``factor``."""
    chain = _chain(opt_state)
    last = chain[-1]
    hp = dict(last.hyperparams)
    hp["step_size"] = jnp.asarray(factor, dtype=jnp.asarray(hp["step_size"]).dtype)
    return _with_chain(opt_state, (*chain[:-1], last._replace(hyperparams=hp)))


def decay_horizon(opt_state) -> float:
    """Steps over which the learning rate decays by ``decay_rate``."""
    return float(_chain(opt_state)[-2].horizon)


def set_decay_horizon(opt_state, horizon: float):
    """A copy of ``opt_state`` whose learning rate decays over ``horizon`` steps."""
    chain = _chain(opt_state)
    decay = chain[-2]
    return _with_chain(opt_state, (
        *chain[:-2], decay._replace(horizon=jnp.asarray(max(horizon, 1.0), jnp.float32)),
        chain[-1]))


def with_moments_of(opt_state, source):
    """A copy of ``opt_state`` whose gradient statistics (Adam moments) come from ``source``;
    its schedule (step count, decay horizon, plateau factor) is kept."""
    return _with_chain(opt_state, (*_chain(source)[:-2], *_chain(opt_state)[-2:]))


def current_learning_rate(cfg: TrainingConfig, step: int, opt_state) -> float:
    """Learning rate in effect at ``step`` (schedule times plateau factor)."""
    return float(learning_rate(cfg, step, decay_horizon(opt_state))) * plateau_factor(opt_state)
