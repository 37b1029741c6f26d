"""Validated configuration: model hyperparameters, data, training (pydantic, YAML on disk).

Defaults are the published SO3krates reference settings. ``--set a.b=value`` overrides use
:func:`apply_overrides`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EFAConfig(_Strict):
    """Euclidean fast attention (``so3krates.model.efa``): a global, linear-cost attention
    update after chosen transformer blocks, for molecules (periodic structures are refused)."""

    enabled: bool = False
    frequencies: int = Field(16, gt=0, description="feature pairs, one frequency each")
    max_frequency: float = Field(0.6, gt=0, description="θ_max in 1/Å (θ_p = θ_max p / P)")
    max_extent: float = Field(
        20.0, gt=0, description="Å, the largest interatomic distance the Lebedev grid must "
        "resolve (θ_max · max_extent); structures beyond it are refused")
    degree: int | None = Field(None, description="Lebedev degree; None: the smallest that "
                               "resolves θ_max · max_extent")
    blocks: list[int] | None = Field(None, description="after which transformer blocks "
                                     "(0-based); None: every block")


class ModelConfig(_Strict):
    """SO3krates hyperparameters (see ``shared/docs/so3krates-model.md``)."""

    features: int = Field(128, gt=0)
    # The specification's default; the reference code's published aspirin runs used 2. On rMD17
    # aspirin 3 blocks cost 1.55x per step and still won at equal training time (30 minutes:
    # test forces 18.8 vs 22.0 meV/Å, docs/performance-notes.md).
    num_layers: int = Field(3, gt=0)
    num_heads: int = Field(4, gt=0)
    degrees: list[int] = [1, 2, 3, 4]
    cutoff: float = Field(5.0, gt=0, description="Å")
    num_radial: int = Field(32, gt=0)
    radial_basis: Literal["bernstein", "gaussian", "bessel"] = "bernstein"
    cutoff_fn: Literal["cosine", "polynomial"] = "cosine"
    layer_norm: bool = False
    residual_mlp: bool = True
    # Zeros: two 30-minute rMD17 aspirin pairs side by side (seeds 0 and 1) ended at test forces
    # 17.93 / 18.74 meV/Å against 19.14 / 19.14 with lecun_normal (docs/performance-notes.md).
    output_init: Literal["lecun_normal", "zeros"] = Field(
        "zeros", description="initialiser of the energy head's last kernel; 'zeros': the "
        "untrained model predicts the reference energies and zero forces"
    )
    dtype: Literal["float32", "float64"] = "float32"
    # Physics beyond the cutoff (SpookyNet / SO3LR), each off by default; see docs/long-range.md.
    charge_spin: bool = Field(False, description="embed the total charge and the number of "
                              "unpaired electrons of each structure into the atomic features")
    electrostatics: bool = Field(False, description="learned partial charges summing to the "
                                 "total charge, and their damped Coulomb energy")
    dispersion: Literal["none", "learned", "d3"] = Field(
        "none", description="'learned': Tkatchenko-Scheffler dispersion from learned "
        "Hirshfeld-volume ratios (SO3LR); 'd3': DFT-D3(BJ) two-body dispersion as a fixed term "
        "(parameters of d3_functional), for data computed without dispersion")
    d3_functional: str = Field(
        "pbe", description="the functional whose D3(BJ) parameters dispersion 'd3' uses "
        "(so3krates.terms.d3.BJ_PARAMETERS: pbe, pbe0, b3lyp, r2scan, ...)")
    zbl: bool = Field(False, description="Ziegler-Biersack-Littmark nuclear repulsion, switched "
                      "off smoothly at the cutoff")
    long_range_cutoff: float | None = Field(
        None, gt=0, description="Å, pairs of the electrostatics and dispersion terms; None: "
        "every pair of a molecule (periodic structures need a value)")
    efa: EFAConfig = EFAConfig()
    ewald_accuracy: float = Field(
        1e-6, gt=0, lt=1, description="electrostatics of 3D-periodic structures (an Ewald sum "
        "with long_range_cutoff as its real-space cutoff): erfc(alpha rc), which also sets the "
        "k-space cutoff; smaller is more accurate and costs more k-vectors")
    kspace_method: Literal["auto", "ewald", "pme"] = Field(
        "auto", description="reciprocal part of the Ewald sum of a single periodic structure "
        "(calculator, md, relax): over its k-vectors (ewald), on a particle-mesh grid (pme, "
        "O(N log N) for large cells), or pme where atoms x k-vectors exceed 2e5 (auto); "
        "training batches always use k-vectors")

    @property
    def long_range(self) -> bool:
        """True if a term needs the long-range pair set."""
        return self.electrostatics or self.dispersion != "none"

    @field_validator("degrees")
    @classmethod
    def _degrees(cls, v: list[int]) -> list[int]:
        if not v or any(l < 1 for l in v) or len(set(v)) != len(v):
            raise ValueError("degrees must be distinct integers >= 1")
        return sorted(v)

    @model_validator(mode="after")
    def _feature_split(self) -> "ModelConfig":
        # Both attention branches split the features evenly: per head, and per degree.
        if self.features % self.num_heads or self.features % len(self.degrees):
            raise ValueError(
                f"features ({self.features}) must be divisible by num_heads ({self.num_heads}) "
                f"and by the number of degrees ({len(self.degrees)})"
            )
        return self


class DataConfig(_Strict):
    """Where the data is, how to read it, and how to split it."""

    path: str | None = None
    format: str | None = None
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = Field("stress", description="optional stress label (ASE's sign, energy "
                            "per volume; 6 Voigt or 9 numbers)")
    virial_key: str = Field("virial", description="optional virial label (3x3, energy), "
                            "used where a structure has no stress")
    charge_key: str = Field("charge", description="per-structure total charge in e (info key; "
                            "'total_charge' is read too)")
    spin_key: str = Field("spin", description="per-structure number of unpaired electrons "
                          "(info key; 'multiplicity' is read too, as 2S + 1)")
    dipole_key: str = Field("dipole", description="optional dipole label, e Å (3 numbers)")
    charges_key: str = Field("charges", description="optional per-atom partial-charge label, e")
    default_charge: float = Field(0.0, description="total charge of structures without one")
    default_spin: float = Field(0.0, ge=0, description="unpaired electrons of structures "
                                "without a spin")
    energy_unit: str = "eV"
    length_unit: str = "Angstrom"
    nan_labels: Literal["error", "mask"] = "error"
    n_train: int = Field(950, gt=0)
    n_valid: int = Field(50, gt=0)
    n_test: int | None = Field(None, ge=0, description="None: all remaining structures")
    split_seed: int = 0
    shuffle_split: bool = True


# Stress errors in eV/Å³ are ~100x smaller than force errors in eV/Å (1 GPa = 0.0062 eV/Å³):
# this weight gives the stress term a share of the loss comparable to the forces'.
DEFAULT_STRESS_WEIGHT = 100.0


# Named alternatives to the training defaults: ``--set training.preset=NAME`` (or ``preset:``
# under ``training:`` in a YAML file). A preset sets its keys unless the same configuration sets
# them itself, so ``--set training.preset=huber --set training.huber_delta=0.02`` works.
# Measured side by side in benchmarks/defaults.py (benchmarks/results/defaults_*.json).
TRAINING_PRESETS: dict[str, dict[str, Any]] = {
    # The defaults below.
    "default": {},
    # The Huber loss (errors beyond 0.01 eV, eV/Å count linearly) and EMA 0.999 on top of the
    # defaults: benchmarks/aspirin.py's recipe, the lowest rMD17 aspirin errors after 30 minutes
    # (test forces 15.6 meV/Å; Huber vs MSE there: 21.0 vs 23.4), but its models break apart in
    # hot MD: 3 of 6 stable at 600 K over 10 ps (issue 31 side by side; a user's 50 ps runs: 1
    # of 3), the Huber models of docs/performance-notes.md 0 of 3 at 500 K over 100 ps; with 2.5
    # minutes on MD17 ethanol it trailed the defaults (test forces 50.2 vs 36.1 meV/Å, energies
    # 134 vs 8.8 meV).
    # Check dynamics (`benchmarks/md.py --stability`) before relying on such a model.
    "huber": {"loss": "huber", "huber_delta": 0.01, "ema_decay": 0.999},
    # The defaults before issue 31 (MSE, lr 1e-3 decaying to 10 %, EMA 0.99, batch 5, no weight
    # decay), to reproduce older runs: fewer updates per minute (aspirin, 6 minutes: test forces
    # 77.9 vs 56.8 meV/Å), ahead on the very short ethanol run (27.5 vs 36.1 meV/Å).
    "legacy": {"loss": "mse", "learning_rate": 1e-3, "decay_rate": 0.1, "ema_decay": 0.99,
               "batch_size": 5, "weight_decay": 0.0},
}


FREEZE_STRATEGIES = ("none", "embedding", "blocks:K", "all_but_readout")


def parse_freeze_strategy(strategy: str) -> tuple[str, int]:
    """``(kind, K)`` of a ``training.freeze`` value (K for ``blocks:K``, else 0); raises
    ValueError naming the known strategies (see ``so3krates.training.freezing``)."""
    text = str(strategy).strip()
    if text in ("none", "embedding", "all_but_readout"):
        return text, 0
    m = re.fullmatch(r"blocks:\s*(\d+)", text)
    if m:
        return "blocks", int(m.group(1))
    raise ValueError(f"unknown freeze strategy {strategy!r} (known: "
                     f"{', '.join(FREEZE_STRATEGIES)}, with K a number of interaction blocks)")


class TrainingConfig(_Strict):
    """Optimisation, validation, checkpoints and budgets."""

    preset: str | None = Field(
        None, description="a named set of training settings (TRAINING_PRESETS: "
        f"{', '.join(TRAINING_PRESETS)}); keys set explicitly win")
    seed: int = 0
    # The defaults (issue 31): the recipe that was stable in every hot MD run side by side and
    # close to the most accurate (benchmarks/defaults.py; 400 training structures, one contended
    # CPU core, Langevin at 600 K for 10 ps): MSE, Adam at 3e-3 decaying to 1 % over the budget,
    # batch 2, weight decay 0.01, EMA 0.99. rMD17 aspirin, 6 minutes (test forces meV/Å /
    # energies meV, stable runs): these 56.8 / 26.7, 6 of 6; Huber + EMA 0.999 (preset `huber`,
    # the former aspirin recipe) 53.7 / 24.6, 3 of 6; MSE + EMA 0.999 49.0 / 21.8, 2 of 3; the
    # old defaults (preset `legacy`) 77.9 / 42.5, 2 of 3. MD17 ethanol, 2.5 minutes: 36.1 / 8.8
    # (old defaults 27.5 / 6.5; every ethanol model 3 of 3 stable); EMA 0.999 lags far behind
    # in so short a run (MSE: 93.8 / 357). Without weight decay the aspirin run reached 80.6.
    batch_size: int = Field(2, gt=0)
    energy_weight: float = Field(0.01, ge=0)
    forces_weight: float = Field(0.99, ge=0)
    stress_weight: float | None = Field(
        None, ge=0, description="weight of the stress term (errors in eV/Å³); None: "
        "100 when the training data has stress labels, else off")
    dipole_weight: float | None = Field(
        None, ge=0, description="weight of the dipole term (errors in e Å); None: 1 when the "
        "model has electrostatics and the data dipole labels, else off")
    charges_weight: float | None = Field(
        None, ge=0, description="weight of the partial-charge term (errors in e); None: 1 when "
        "the model has electrostatics and the data charge labels, else off")
    loss: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(
        0.01, gt=0, description="loss 'huber': errors beyond it (eV per structure, eV/Å per "
        "force component) count linearly"
    )
    # Adam, not AMSGrad: AMSGrad's running maximum of the second moment keeps the huge
    # gradients of the first steps, shrinking every later step (six-minute aspirin probes,
    # test force MAE at lr 3e-3: Adam 32.1, AMSGrad 41.7 meV/Å; at 1e-3: 42.8 and 51.5).
    optimizer: Literal["adam", "amsgrad"] = "adam"
    adam_b2: float = Field(0.999, gt=0, lt=1, description="decay of Adam's second moment")
    learning_rate: float = Field(3e-3, gt=0)
    schedule: Literal["exponential", "cosine", "constant"] = "exponential"
    decay_rate: float = Field(
        0.01, gt=0, le=1, description="learning-rate factor over decay_steps (cosine: the final "
        "factor, kept after decay_steps)"
    )
    decay_steps: Literal["budget"] | int = Field(
        "budget", description="steps, or 'budget': the steps this run will take (its step limit, "
        "or what fits its wall-clock budget at the measured rate)"
    )
    warmup_steps: int = Field(0, ge=0)
    plateau_patience: int = Field(0, ge=0, description="validations; 0 disables")
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    weight_decay: float = Field(
        0.01, ge=0, description="decoupled (AdamW) weight decay of the weight matrices, times the "
        "learning rate; biases, embeddings and per-element scales/shifts are not decayed")
    grad_clip: float | None = Field(10.0, gt=0)
    divergence_factor: float | None = Field(
        10.0, gt=1, description="a validation loss above this multiple of the best, or a mean "
        "training loss between validations that is not finite or above this multiple of the "
        "lowest, restores the last proven-good state and multiplies the learning rate by "
        "plateau_factor (so3krates.training.guard); None disables"
    )
    ema_decay: float | None = Field(0.99, ge=0, lt=1)
    max_epochs: int = Field(2000, gt=0)
    max_steps: int | None = Field(None, gt=0)
    max_time_minutes: float | None = Field(None, gt=0)
    valid_every: int = Field(200, gt=0, description="steps between validations")
    checkpoint_every: int | None = Field(None, gt=0, description="steps; default valid_every")
    early_stopping_patience: int | None = Field(None, gt=0, description="validations")
    buckets: int = Field(3, gt=0)
    devices: int = Field(
        1, gt=0, description="devices (GPUs, or CPU cores as JAX CPU devices) that share every "
        "batch, batch_size / devices structures each (so3krates.training.sharding)"
    )
    progress: bool = True
    # Fine-tuning (so3krates.training.fine_tuning, docs/fine-tuning.md).
    init_from: str | None = Field(
        None, description="a trained model directory to start from instead of random "
        "parameters (fine-tuning; so3krates train --init-from DIR): its architecture "
        "(model.yaml) and parameters; a model.* setting that changes the architecture is "
        "refused (dtype, ewald_accuracy, kspace_method and output_init may differ)")
    freeze: str = Field(
        "none", description="fine-tuning: parameters kept fixed, bitwise: none; embedding (the "
        "element embedding, and the charge and spin embeddings); blocks:K (the embedding and "
        "the first K interaction blocks); all_but_readout (everything but the output MLP, the "
        "per-element energy scale and shift and the per-atom heads). Rows of elements new to "
        "the model always train")
    reference_energies: Literal["refit", "keep"] = Field(
        "refit", description="fine-tuning: refit the per-element reference energies on the "
        "new training set, as a new run does (refit), or keep the initial model's and fit only "
        "those of new elements, by least squares on the residual (keep)")

    @field_validator("freeze")
    @classmethod
    def _freeze(cls, v: str) -> str:
        kind, k = parse_freeze_strategy(v)  # ValueError: unknown strategy
        return f"blocks:{k}" if kind == "blocks" else kind

    @model_validator(mode="after")
    def _fine_tuning_needs_a_model(self):
        if self.init_from is None:
            if self.freeze != "none":
                raise ValueError(f"training.freeze={self.freeze} needs training.init_from "
                                 "(--init-from DIR): only a trained model's parameters are frozen")
            if self.reference_energies != "refit":
                raise ValueError("training.reference_energies=keep needs training.init_from "
                                 "(--init-from DIR): a new run has no reference energies to keep")
        return self

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") is not None:
            name = data["preset"]
            if name not in TRAINING_PRESETS:
                raise ValueError(f"unknown training preset {name!r} (known: "
                                 f"{', '.join(TRAINING_PRESETS)})")
            data = {**TRAINING_PRESETS[name], **data}
        return data

    @model_validator(mode="before")
    @classmethod
    def _processes_replaced(cls, data: Any) -> Any:
        if isinstance(data, dict) and "processes" in data:
            raise ValueError("training.processes was replaced by training.devices (so3krates "
                             "train --devices N: N CPU cores or GPUs share every batch)")
        return data

    @model_validator(mode="after")
    def _batch_splits_over_devices(self):
        if self.batch_size % self.devices:
            raise ValueError(f"batch_size={self.batch_size} does not split evenly over "
                             f"devices={self.devices}")
        return self

    @field_validator("decay_steps")
    @classmethod
    def _decay_steps(cls, v):
        if v != "budget" and v <= 0:
            raise ValueError("decay_steps must be a positive number of steps or 'budget'")
        return v


class Config(_Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {p} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults), apply overrides, and validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        raw = yaml.safe_load(text) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
    apply_overrides(raw, overrides or [])
    return Config.model_validate(raw)


def dump_yaml(obj: dict, path: Path) -> None:
    """Write a dict as YAML atomically."""
    from so3krates.fileio import atomic_write_bytes

    atomic_write_bytes(path, yaml.safe_dump(obj, sort_keys=False).encode())
