"""Fine-tuning: a training run that starts from a trained model directory
(``so3krates train --init-from DIR``, ``training.init_from``) instead of random parameters.

- The architecture is the initial model's (its ``model.yaml``): :func:`resolve_init_from`
  takes the model settings from there and refuses a ``model.*`` setting that differs from it,
  except the few that do not change the network (:data:`FINE_TUNING_MODEL_KEYS`).
- The parameters are the initial model's. The element embedding is a table over every atomic
  number (``so3krates.model_io.NUM_ELEMENTS``), so a new element has a row already: one the
  initial run never trained, still at its initial value (a fresh random row); such rows
  train under every freeze strategy (``so3krates.training.freezing``).
- Reference energies: ``refit`` (the default) fits them on the new training set as a new run
  does (the model then knows the new training set's elements); ``keep`` keeps the initial
  model's and fits only the new elements' to the residual of the initial model's predictions
  (:func:`kept_reference_energies`).
- Provenance: ``init_from.yaml`` in the run directory, and ``init_from`` in every
  ``model.yaml`` it writes, name the initial model (path, parameters' SHA-256, its step);
  a run resumes only from the same origin (:func:`check_resume_origin`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from so3krates.config import Config, ModelConfig, dump_yaml
from so3krates.model_io import PARAMS_FILE, ModelFileError, load_model
from so3krates.training.freezing import check_blocks

ORIGIN_FILE = "init_from.yaml"
# Model settings a fine-tuning run may set to other values than its initial model's: they
# change neither the parameters' shapes nor the function the network computes (beyond
# rounding and the accuracy of the Ewald sum). Any other differing ``model.*`` is refused.
FINE_TUNING_MODEL_KEYS = {
    "dtype": "the precision of training (the parameters are converted)",
    "ewald_accuracy": "the accuracy of the Ewald sum of periodic electrostatics",
    "kspace_method": "how a single periodic structure's Ewald sum is computed",
    "output_init": "an initialiser; the parameters come from the initial model",
}


@dataclass
class InitModel:
    """The model a fine-tuning run starts from."""

    directory: Path
    config: ModelConfig
    params: Any  # the parameter tree, as saved
    reference_energies: dict[int, float]
    energy_scale: float
    params_sha256: str
    meta: dict

    @property
    def elements(self) -> list[int]:
        return sorted(self.reference_energies)

    def provenance(self) -> dict:
        """What ``model.yaml`` and ``init_from.yaml`` record of the initial model."""
        trained = self.meta.get("trained") or {}
        out = {"path": str(self.directory), "params_sha256": self.params_sha256}
        if "step" in trained:
            out["step"] = int(trained["step"])
        if trained.get("data") is not None:
            out["data"] = str(trained["data"])
        if "init_from" in self.meta:  # a fine-tuned model fine-tuned again
            out["init_from"] = self.meta["init_from"]
        return out


def load_init_model(path: str | Path) -> InitModel:
    """The model directory ``path`` (checked as ``load_model`` checks it), with one-line
    errors that say it is the fine-tuning origin."""
    directory = Path(path).expanduser().resolve()
    if not directory.exists():
        raise ModelFileError(f"--init-from {path}: no such directory")
    if not directory.is_dir():
        raise ModelFileError(f"--init-from {path}: not a model directory (a file)")
    try:
        model = load_model(directory, radial_knots=0)
    except ModelFileError as err:
        raise ModelFileError(f"--init-from {path}: {err}") from None
    sha = hashlib.sha256((directory / PARAMS_FILE).read_bytes()).hexdigest()
    return InitModel(directory, model.config, model.params, dict(model.reference_energies),
                     model.energy_scale, sha, model.meta)


def _model_settings(given: ModelConfig, init: InitModel) -> ModelConfig:
    """The initial model's settings, with those of ``given`` that were set explicitly and may
    differ (:data:`FINE_TUNING_MODEL_KEYS`); a differing architecture setting is an error."""
    base, mine = init.config.model_dump(), given.model_dump()
    updates = {}
    for key in sorted(given.model_fields_set):
        if mine[key] == base.get(key):
            continue
        if key not in FINE_TUNING_MODEL_KEYS:
            raise ValueError(
                f"model.{key}={mine[key]!r} would change the architecture of the model in "
                f"{init.directory} ({key}={base.get(key)!r}): a fine-tuning run keeps it; drop "
                f"the setting (or train a new model without --init-from)")
        updates[key] = mine[key]
    return ModelConfig.model_validate({**base, **updates})


def resolve_init_from(config: Config, output: str | Path | None = None
                      ) -> tuple[Config, InitModel | None]:
    """``(config, initial model)``: for a fine-tuning run (``training.init_from``) the config
    with the initial model's architecture and ``init_from`` as an absolute path; otherwise
    ``(config, None)``. Raises ValueError (or ModelFileError) as one line: a missing or broken
    model directory, a differing architecture setting, ``blocks:K`` beyond the model's blocks,
    ``--output`` the initial model's own directory."""
    tcfg = config.training
    if tcfg.init_from is None:
        return config, None
    init = load_init_model(tcfg.init_from)
    if output is not None and Path(output).expanduser().resolve() == init.directory:
        raise ValueError(f"--output {output} is the directory of the model to fine-tune "
                         f"(--init-from): write the fine-tuned model to another directory")
    model = _model_settings(config.model, init)
    check_blocks(tcfg.freeze, model.num_layers, f"the model in {init.directory}")
    training = tcfg.model_copy(update={"init_from": str(init.directory)})
    return config.model_copy(update={"model": model, "training": training}), init


def initial_parameters(init: InitModel, dtype) -> Any:
    """The initial model's parameter tree as NumPy arrays of ``dtype``."""
    import jax

    return jax.tree.map(lambda a: np.asarray(a, dtype=dtype), init.params)


def kept_reference_energies(graphs, predict_fn, params, known: dict[int, float]
                            ) -> dict[int, float]:
    """``known`` (the initial model's reference energies) plus those of the training set's
    new elements, fitted by least squares to what the initial model leaves unexplained:
    ``E - E_model`` over the training batches ``graphs`` (a ``GraphSource``), with
    ``predict_fn(params, graph)`` the initial model with the ``known`` reference energies
    (0 eV for new elements). One pass of predictions; nothing to fit without new elements."""
    from so3krates.training.statistics import ReferenceEnergyFit

    fit = ReferenceEnergyFit()
    for graph, labels in graphs.batches():
        n_struct = int(np.sum(graph.structure_mask))
        energy = np.asarray(predict_fn(params, graph).energy, np.float64)[:n_struct]
        residual = np.where(labels.energy_mask[:n_struct], labels.energy[:n_struct] - energy,
                            np.nan)
        atoms = np.asarray(graph.atom_mask, bool)
        structure, numbers = np.asarray(graph.structure)[atoms], np.asarray(graph.numbers)[atoms]
        fit.add([numbers[structure == s] for s in range(n_struct)], residual)
    # The known elements' energies are in the predictions: fitted with them fixed at 0.
    new = fit.solve_keeping({z: 0.0 for z in known})
    return {**{int(z): float(e) for z, e in known.items()},
            **{z: e for z, e in new.items() if z not in known}}


def write_origin(output: Path, init: InitModel, config: Config) -> None:
    """``init_from.yaml`` in a new fine-tuning run's directory."""
    dump_yaml({**init.provenance(), "freeze": config.training.freeze,
               "reference_energies": config.training.reference_energies}, output / ORIGIN_FILE)


def check_resume_origin(output: Path, config_file: Path, init: InitModel | None) -> None:
    """Refuse to resume the run in ``output`` from another origin than it started from: a
    run from scratch with ``--init-from``, a fine-tuning run without it or from another model
    directory, or from one whose parameters changed since."""
    raw = yaml.safe_load(config_file.read_text()) or {}
    saved = (raw.get("training") or {}).get("init_from")
    current = None if init is None else str(init.directory)
    if saved is None and current is None:
        return
    if saved is None:
        raise ValueError(f"{output} holds a run trained from scratch, not one fine-tuned from "
                         f"{current}: use another --output for the fine-tuning run")
    if current is None:
        raise ValueError(f"{output} holds a fine-tuning run from {saved}: resume it with "
                         f"--init-from {saved}, or use another --output")
    if Path(saved) != Path(current):
        raise ValueError(f"{output} holds a fine-tuning run from {saved}, not from {current}: "
                         f"use another --output")
    origin_file = output / ORIGIN_FILE
    if origin_file.exists():
        origin = yaml.safe_load(origin_file.read_text()) or {}
        sha = origin.get("params_sha256")
        if sha and sha != init.params_sha256:
            raise ValueError(f"the model in {current} has changed since the fine-tuning run in "
                             f"{output} started from it (parameters {sha[:12]}..., now "
                             f"{init.params_sha256[:12]}...): use another --output")
