"""Optimiser: gradient clipping, Adam/AMSGrad, warm-up + exponential decay, plateau factor."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from so3krates.config import TrainingConfig


def learning_rate_schedule(cfg: TrainingConfig) -> optax.Schedule:
    """Linear warm-up to ``learning_rate``, then exponential decay (or constant)."""
    if cfg.schedule == "exponential":
        main = optax.exponential_decay(cfg.learning_rate, cfg.decay_steps, cfg.decay_rate)
    else:
        main = optax.constant_schedule(cfg.learning_rate)
    if cfg.warmup_steps == 0:
        return main
    warm = optax.linear_schedule(cfg.learning_rate / 100, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warm, main], [cfg.warmup_steps])


def make_optimizer(cfg: TrainingConfig) -> optax.GradientTransformation:
    """The configured optimiser. Its last state entry holds the reduce-on-plateau factor
    (``plateau_factor`` / :func:`set_plateau_factor`), so it is checkpointed with the rest."""
    scale = optax.scale_by_amsgrad() if cfg.optimizer == "amsgrad" else optax.scale_by_adam()
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip else optax.identity(),
        scale,
        optax.scale_by_learning_rate(learning_rate_schedule(cfg)),
        optax.inject_hyperparams(optax.scale)(step_size=1.0),
    )


def plateau_factor(opt_state) -> float:
    """Current reduce-on-plateau multiplier of the learning rate."""
    return float(opt_state[-1].hyperparams["step_size"])


def set_plateau_factor(opt_state, factor: float):
    """A copy of ``opt_state`` with the plateau multiplier set to ``factor``."""
    last = opt_state[-1]
    hp = dict(last.hyperparams)
    hp["step_size"] = jnp.asarray(factor, dtype=jnp.asarray(hp["step_size"]).dtype)
    return (*opt_state[:-1], last._replace(hyperparams=hp))


def current_learning_rate(cfg: TrainingConfig, step: int, opt_state) -> float:
    """Learning rate in effect at ``step`` (schedule times plateau factor)."""
    return float(learning_rate_schedule(cfg)(step)) * plateau_factor(opt_state)
