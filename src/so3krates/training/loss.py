"""Weighted energy, force and stress losses (mean squared error or Huber), with NaN/padding
masks."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from so3krates.batching import Labels
from so3krates.config import DEFAULT_STRESS_WEIGHT, TrainingConfig
from so3krates.data import Dataset
from so3krates.potential import Prediction
from so3krates.training.statistics import TrainingSummary


def with_stress_weight(cfg: TrainingConfig, data: Dataset | TrainingSummary) -> TrainingConfig:
    """``cfg`` with its stress weight resolved for ``data`` (a training set or its summary):
    the configured one (None: :data:`~so3krates.config.DEFAULT_STRESS_WEIGHT`) if some
    structure has a stress label, else 0 (no stress computed)."""
    if not data.has_stress:
        return cfg.model_copy(update={"stress_weight": 0.0})
    weight = DEFAULT_STRESS_WEIGHT if cfg.stress_weight is None else cfg.stress_weight
    return cfg.model_copy(update={"stress_weight": weight})


def with_electronic_weights(cfg: TrainingConfig, data: Dataset | TrainingSummary,
                            electrostatics: bool) -> TrainingConfig:
    """``cfg`` with its dipole and partial-charge weights resolved: the configured ones (None:
    1) where the model has electrostatics and ``data`` (a training set or its summary) has
    such labels, else 0. A weight set for a model without electrostatics is an error
    (nothing would learn it)."""
    update = {}
    for name, has in (("dipole_weight", data.has_dipole), ("charges_weight", data.has_charges)):
        weight = getattr(cfg, name)
        if weight and not electrostatics:
            raise ValueError(f"training.{name}={weight} needs a model with partial charges "
                             "(model.electrostatics=true)")
        update[name] = (1.0 if weight is None else weight) if electrostatics and has else 0.0
    return cfg.model_copy(update=update)


def huber_delta(cfg: TrainingConfig) -> float | None:
    """The configured Huber threshold, None for the mean squared error."""
    return cfg.huber_delta if cfg.loss == "huber" else None


def huber(err: jnp.ndarray, delta: float | None) -> jnp.ndarray:
    """Elementwise squared error, or with ``delta`` the Huber loss scaled to match it for small
    errors: ``err^2`` for ``|err| <= delta``, ``delta (2 |err| - delta)`` beyond (linear)."""
    if delta is None:
        return err * err
    a = jnp.abs(err)
    return jnp.where(a <= delta, err * err, delta * (2.0 * a - delta))


def masked_mean_loss(err: jnp.ndarray, mask: jnp.ndarray, delta: float | None = None) -> jnp.ndarray:
    """Mean of :func:`huber` of the errors ``err`` over ``mask`` entries (0 if the mask is
    empty); without ``delta`` the mean squared error."""
    err = jnp.where(mask, err, 0.0)
    return jnp.sum(huber(err, delta)) / jnp.maximum(jnp.sum(mask), 1)


def weighted_loss(
    energy_errors: jnp.ndarray,
    energy_mask: jnp.ndarray,
    force_errors: jnp.ndarray,
    forces_mask: jnp.ndarray,
    energy_weight: float,
    forces_weight: float,
    huber_delta: float | None = None,
    stress_errors: jnp.ndarray | None = None,
    stress_mask: jnp.ndarray | None = None,
    stress_weight: float = 0.0,
    extra: tuple = (),
) -> tuple[jnp.ndarray, dict]:
    """``w_E * L(E per structure) + w_F * L(F per component) [+ w_S * L(stress component)]`` of
    errors (eV, eV/Å, eV/Å³) over their masks, L the mean squared error or, with
    ``huber_delta``, :func:`huber`. The stress term is left out without stress errors or
    weight (structures without a stress label are masked out of it). ``extra``: further
    ``(name, errors, mask, weight)`` terms (dipoles in e Å, partial charges in e; always MSE,
    their errors are not in eV)."""
    e = masked_mean_loss(energy_errors, energy_mask, huber_delta)
    f = masked_mean_loss(force_errors, forces_mask, huber_delta)
    loss, parts = energy_weight * e + forces_weight * f, {"energy_loss": e, "forces_loss": f}
    if stress_errors is not None and stress_weight:
        s = masked_mean_loss(stress_errors, stress_mask, huber_delta)
        loss, parts["stress_loss"] = loss + stress_weight * s, s
    for name, errors, mask, weight in extra:
        if errors is not None and weight:
            term = masked_mean_loss(errors, mask, None)
            loss, parts[f"{name}_loss"] = loss + weight * term, term
    return loss, parts


def energy_forces_loss(
    pred: Prediction,
    labels: Labels,
    energy_weight: float,
    forces_weight: float,
    huber_delta: float | None = None,
    stress_weight: float = 0.0,
    dipole_weight: float = 0.0,
    charges_weight: float = 0.0,
) -> tuple[jnp.ndarray, dict]:
    """:func:`weighted_loss` of a batch's predictions against its labels (NaN and padding
    labels masked); the stress, dipole and partial-charge terms where both prediction and
    labels have them."""
    with_stress = pred.stress is not None and labels.stress is not None
    extra = []
    if pred.dipole is not None and labels.dipole is not None:
        extra.append(("dipole", pred.dipole - labels.dipole, labels.dipole_mask, dipole_weight))
    if pred.charges is not None and labels.charges is not None:
        extra.append(("charges", pred.charges - labels.charges, labels.charges_mask,
                      charges_weight))
    return weighted_loss(
        pred.energy - labels.energy, labels.energy_mask,
        pred.forces.astype(jnp.float64) - labels.forces, labels.forces_mask,
        energy_weight, forces_weight, huber_delta,
        pred.stress - labels.stress if with_stress else None,
        labels.stress_mask if with_stress else None, stress_weight, tuple(extra),
    )


def errors_loss(
    energy_errors: np.ndarray, force_errors: np.ndarray, cfg: TrainingConfig,
    stress_errors: np.ndarray | None = None, dipole_errors: np.ndarray | None = None,
    charges_errors: np.ndarray | None = None,
) -> float:
    """The training loss of given errors: energies (S,) in eV, force components (any shape) in
    eV/Å, stress components in eV/Å³, those of NaN labels already left out; used for the
    validation loss. A NaN prediction makes it NaN."""
    de, df = (np.ravel(a) for a in (energy_errors, force_errors))
    ds = None if stress_errors is None or not np.size(stress_errors) else np.ravel(stress_errors)
    extra = tuple((name, np.ravel(err), np.ones(np.size(err), bool), weight or 0.0)
                  for name, err, weight in (("dipole", dipole_errors, cfg.dipole_weight),
                                            ("charges", charges_errors, cfg.charges_weight))
                  if err is not None and np.size(err))
    loss, _ = weighted_loss(de, np.ones(de.shape, bool), df, np.ones(df.shape, bool),
                            cfg.energy_weight, cfg.forces_weight, huber_delta(cfg),
                            ds, None if ds is None else np.ones(ds.shape, bool),
                            cfg.stress_weight or 0.0, extra)
    return float(loss)
