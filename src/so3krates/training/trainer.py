"""The training loop: seeded split, statistics, padded batches, validation, checkpoints.

``train(config, output)`` is resumable: run it again with the same arguments after a crash
(or ``kill -9``) and it continues from the latest checkpoint to the same result as an
uninterrupted run with the same seed. Batch order is a pure function of (seed, epoch).
"""

from __future__ import annotations

import csv
import io
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import yaml

from so3krates.batching import GraphDataset
from so3krates.allocator import keep_freed_memory
from so3krates.compile import jit
from so3krates.config import Config, dump_yaml
from so3krates.data import Dataset
from so3krates.data.hdf5 import HDF5Dataset
from so3krates.data.split import SPLIT_FILE, load_split, make_split, save_split
from so3krates.evaluate import (
    electronic_errors,
    electronic_metrics,
    label_errors,
    metrics_of_errors,
    predict_dataset,
)
from so3krates.fileio import atomic_write_bytes
from so3krates.model_io import build_module, init_params, reference_table, save_model
from so3krates.potential import make_predict_fn
from so3krates.training.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from so3krates.training.fine_tuning import (
    ORIGIN_FILE,
    check_resume_origin,
    initial_parameters,
    kept_reference_energies,
    resolve_init_from,
    write_origin,
)
from so3krates.training.freezing import (
    TRAINABLE,
    count,
    freeze_labels,
    freezing_optimizer,
    frozen_summary,
    partitioned_training_state,
    trainable_mask,
)
from so3krates.training.guard import DivergenceGuard
from so3krates.terms.physical import PhysicalTerms
from so3krates.training.loss import errors_loss, with_electronic_weights, with_stress_weight
from so3krates.training.optimizer import (
    budget_horizon,
    current_learning_rate,
    initial_horizon,
    make_optimizer,
    plateau_factor,
    set_decay_horizon,
    set_plateau_factor,
    weight_decay_mask,
    with_moments_of,
)
from so3krates.training.plots import plot_learning_curves, plot_parity
from so3krates.streaming import prefetch
from so3krates.training.data import (
    check_training_data,
    load_training_data,
    training_graphs,
    training_sets,
)
from so3krates.training.sharding import (
    ShardedStep,
    device_mesh,
    local_copy,
    replicate,
    sharded_batches,
)
from so3krates.training.step import copy_state, flat_training_state, make_train_step

CONFIG_FILE = "train_config.yaml"
METRICS_FILE = "metrics.csv"
LATEST = Path("checkpoints") / "latest.msgpack"
METRIC_COLUMNS = [
    "step", "epoch", "elapsed_s", "learning_rate", "train_loss", "valid_loss",
    "valid_energy_mae", "valid_energy_rmse", "valid_forces_mae", "valid_forces_rmse",
    "valid_stress_mae",
]
# Fields that may change between a run and its resumption (budgets, not the optimisation).
# The number of devices changes neither: they share each batch and sum its gradient.
RESUMABLE_FIELDS = {"max_epochs", "max_steps", "max_time_minutes", "progress", "early_stopping_patience",
                    "devices"}


@dataclass
class TrainResult:
    """Summary of a training run."""

    output: Path
    steps: int
    epochs: float
    stop_reason: str
    best_valid: dict
    steps_per_second: float
    resumed_from_step: int


def _check_resume_config(output: Path, config: Config) -> None:
    raw = yaml.safe_load((output / CONFIG_FILE).read_text())
    # Runs of versions with process-based data parallelism: the count is a budget setting.
    (raw.get("training") or {}).pop("processes", None)
    saved = Config.model_validate(raw)
    a, b = saved.model_dump(), config.model_dump()
    for section in ("model", "data", "training"):
        for key in set(a[section]) | set(b[section]):
            if section == "training" and key in RESUMABLE_FIELDS:
                continue
            if a[section].get(key) != b[section].get(key):
                raise ValueError(
                    f"{output} holds a run with {section}.{key}={a[section].get(key)!r}, "
                    f"not {b[section].get(key)!r}; use another --output to start a new run"
                )


def _resume_checkpoint(output: Path, read):
    """``read()`` of the checkpoint in ``output``, its errors (corrupt, another version, another
    layout) as one message that says what to do."""
    try:
        return read()
    except ValueError as err:
        raise ValueError(f"cannot resume training: {err}; use another --output to start a "
                         f"new run") from err


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def train(
    config: Config,
    output: str | os.PathLike,
    data: Dataset | HDF5Dataset | None = None,
    console=None,
) -> TrainResult:
    """Train (or resume training) an SO3krates model; the model directory is ``output``.

    Writes into ``output``: ``model.yaml`` + ``params.msgpack`` (best EMA weights),
    ``train_config.yaml``, ``split.npz``, ``metrics.csv``, ``checkpoints/latest.msgpack``
    and ``plots/*.png``. ``console``: a ``rich`` console for messages and the progress bar,
    or ``"stdout"`` / ``"stderr"`` (default stdout).

    ``data``: the dataset (default: read ``config.data.path``); a
    :class:`~so3krates.data.hdf5.HDF5Dataset` (a ``.h5`` file of ``so3krates convert``) keeps
    the training set on disk and reads each batch when needed (:mod:`so3krates.training.data`).

    With ``training.devices > 1`` every batch is split over that many devices
    (:mod:`so3krates.training.sharding`); in a multi-host run every host calls this and the
    first writes the files.

    With ``training.init_from`` (a model directory) the run fine-tunes that model: its
    architecture and parameters, ``training.freeze`` and ``training.reference_energies``
    (:mod:`so3krates.training.fine_tuning`, :mod:`so3krates.training.freezing`).
    """
    from rich.console import Console

    tcfg = config.training
    root = jax.process_index() == 0  # the process that writes files and reports
    if not root:
        console = Console(quiet=True)
    elif console is None or isinstance(console, str):
        console = Console(stderr=console == "stderr")
    output = Path(output)
    # Fine-tuning: the initial model's architecture (errors before anything is written).
    config, init = resolve_init_from(config, output)
    tcfg = config.training
    output.mkdir(parents=True, exist_ok=True)
    mcfg, dcfg = config.model, config.data
    data = data if data is not None else load_training_data(config)
    mesh = device_mesh(tcfg.devices) if tcfg.devices > 1 else None
    terms = PhysicalTerms.from_config(mcfg)
    check_training_data(data, terms, mcfg)  # what the terms cannot do with it, before any work

    resume = (output / LATEST).exists()
    saved = None
    if resume:
        check_resume_origin(output, output / CONFIG_FILE, init)
        _check_resume_config(output, config)
        # Read now: a corrupt checkpoint fails before the batches are built and compiled.
        saved = _resume_checkpoint(output, lambda: read_checkpoint(output / LATEST))
    elif root:
        dump_yaml(config.model_dump(), output / CONFIG_FILE)
        if init is not None:
            write_origin(output, init, config)
        else:
            (output / ORIGIN_FILE).unlink(missing_ok=True)
    if (output / SPLIT_FILE).exists():
        split = load_split(output, len(data))
    else:
        split = make_split(len(data), dcfg.n_train, dcfg.n_valid, dcfg.n_test,
                           dcfg.split_seed, dcfg.shuffle_split)
        if root:
            save_split(output, split, len(data))
    # An HDF5 dataset file: the training set stays on disk, summarised in a streaming pass.
    train_set, valid_set, summary = training_sets(data, split, terms, mcfg)

    tcfg = with_stress_weight(tcfg, summary)
    tcfg = with_electronic_weights(tcfg, summary, terms.electrostatics)
    refs, scale = summary.reference_energies, summary.force_scale
    new_elements: list[int] = []
    if init is not None:
        # The per-element scales of the initial model were initialised with its scale.
        scale = init.energy_scale
        new_elements = sorted(set(summary.reference_energies) - set(init.elements))
    module = build_module(mcfg, scale)
    np_dtype = np.dtype(mcfg.dtype)
    train_graphs = training_graphs(train_set, mcfg, tcfg, terms.graph_options())
    valid_graphs = GraphDataset(valid_set, mcfg.cutoff, tcfg.batch_size, tcfg.buckets, np_dtype,
                                **terms.graph_options())
    # Batches in the halves layout (always, for full neighbour lists): the network then
    # neither reorders pairs nor compiles a fallback for lists without reverses.
    pair_halves = train_graphs.pair_halves and valid_graphs.pair_halves

    def make_predict(refs: dict[int, float], stress: bool):
        return make_predict_fn(module, reference_table(refs), pair_halves=pair_halves,
                               stress=stress, terms=terms)

    if init is None:
        g0, _ = train_graphs.batch([0])
        tree_params = init_params(module, g0, tcfg.seed)
    else:
        tree_params = initial_parameters(init, np_dtype)
        if tcfg.reference_energies == "keep":  # and the new elements' fitted to the residual
            refs = init.reference_energies
            if new_elements:
                initial = jit(make_predict(refs, stress=False))
                refs = kept_reference_energies(train_graphs, initial, tree_params, refs)
    predict = make_predict(refs, bool(tcfg.stress_weight))
    valid_predict = jit(predict)
    decay_mask = weight_decay_mask(tree_params, flat=True)
    n_batches = train_graphs.num_batches(shards=tcfg.devices)
    epoch_steps = tcfg.max_epochs * n_batches
    max_steps = min(tcfg.max_steps or epoch_steps, epoch_steps)
    limit_reason = "max_steps" if tcfg.max_steps and tcfg.max_steps <= epoch_steps else "max_epochs"
    horizon = initial_horizon(tcfg, max_steps)
    if init is not None and tcfg.freeze != "none":
        # Two flat vectors, trainable and frozen; the optimiser leaves the frozen one alone.
        mask = trainable_mask(tree_params, freeze_labels(tree_params, tcfg.freeze, mcfg.num_layers),
                              new_elements)
        params, flat_predict, unravel, partition = partitioned_training_state(
            predict, tree_params, mask)
        optimizer = freezing_optimizer(
            make_optimizer(tcfg, horizon, partition.split(decay_mask)[TRAINABLE]))
    else:
        mask = (None if init is None else
                trainable_mask(tree_params, freeze_labels(tree_params, "none", mcfg.num_layers)))
        params, flat_predict, unravel = flat_training_state(predict, tree_params)
        optimizer = make_optimizer(tcfg, horizon, decay_mask)
    origin = _origin(config, init, mask)
    if init is not None:
        console.print(
            f"fine-tuning {init.directory}: {frozen_summary(mask)} (freeze: {tcfg.freeze}); "
            f"reference energies {'kept' if tcfg.reference_energies == 'keep' else 'refitted'}"
            + (f"; new elements {new_elements}" if new_elements else ""))
    state = {
        "params": params,
        "opt_state": optimizer.init(params),
        "ema": copy_state(params),  # a distinct array: the steps donate both
        "host": {
            "step": np.int64(0),
            "best_valid_loss": np.float64(np.inf),
            "bad_validations": np.int64(0),
            "plateau_bad": np.int64(0),
            "loss_sum": np.float64(0.0),
            "loss_count": np.int64(0),
            "elapsed_s": np.float64(0.0),
        },
    }
    if resume:
        state = _resume_checkpoint(output, lambda: load_checkpoint(output / LATEST, state, saved))
    start_step = int(state["host"]["step"])
    if root:
        _truncate_metrics(output / METRICS_FILE, start_step)

    checkpoint_every = tcfg.checkpoint_every or tcfg.valid_every
    budget_s = tcfg.max_time_minutes * 60.0 if tcfg.max_time_minutes else math.inf
    fit_decay_to_budget = tcfg.decay_steps == "budget" and math.isfinite(budget_s)
    kill_at = int(os.environ.get("SO3KRATES_KILL_AT_STEP", "0"))  # fault injection for tests

    # On several devices the state is replicated (every device applies the same update);
    # validation and checkpoints read one device's copy.
    place = (lambda tree: replicate(tree, mesh)) if mesh else (lambda tree: tree)
    one_copy = local_copy if mesh else (lambda tree: tree)
    params, opt_state, ema = place((state["params"], state["opt_state"], state["ema"]))
    host = {k: v.item() if hasattr(v, "item") else v for k, v in state["host"].items()}
    step = start_step
    t_start = time.monotonic()
    elapsed0 = host["elapsed_s"]

    def clock() -> float:
        return time.monotonic() - t_start

    if mesh is None:
        train_step = make_train_step(flat_predict, optimizer, tcfg)
    else:  # all hosts take their time-based decisions on one clock
        train_step = ShardedStep(flat_predict, optimizer, tcfg, mesh, clock)
        clock = train_step.clock
    step_losses: list = []  # device scalars: adding them eagerly would cost a dispatch per step
    rate_anchor: tuple[int, float] | None = None  # (step, clock()) once the step is compiled
    last_valid: dict = {}
    stop_reason = ""
    # Keeps (params, opt_state, ema) of the last proven-good validation: arrays are immutable,
    # so keeping references costs nothing. Not checkpointed: a resumed run starts it anew.
    guard = DivergenceGuard(tcfg.divergence_factor)

    def flush_loss() -> None:
        # The running training loss lives on the device between validations; fold it into the
        # host state before anything reads or saves it.
        host["loss_sum"] += float(np.sum(jax.device_get(step_losses), dtype=np.float64))
        host["loss_count"] += len(step_losses)
        step_losses.clear()

    def checkpoint() -> None:
        flush_loss()
        host["step"] = step
        host["elapsed_s"] = elapsed0 + clock()
        if root:
            save_checkpoint(output / LATEST, {**one_copy({"params": params, "opt_state": opt_state,
                                                          "ema": ema}),
                                              "host": {k: np.asarray(v) for k, v in host.items()}})

    def fit_decay_horizon() -> None:
        # The decay ends when the budget does: steps so far plus what the remaining time
        # holds at the rate measured since the first (compiled) step, validations included.
        nonlocal opt_state
        now = clock()
        if rate_anchor is None:
            return
        horizon = budget_horizon(step, rate_anchor, now, budget_s - now, max_steps)
        if horizon is not None:
            opt_state = place(set_decay_horizon(opt_state, horizon))

    def validate() -> dict:
        nonlocal opt_state, params, ema
        ema_params = unravel(one_copy(ema))
        e, f, s, extras = predict_dataset(valid_predict, ema_params, valid_graphs, extras=True)
        de, df, ds = label_errors(valid_set, e, f, s)
        dd, dq = electronic_errors(valid_set, extras)
        m = {**metrics_of_errors(valid_set, de, df, ds), **electronic_metrics(dd, dq)}
        vloss = errors_loss(de, df, tcfg, ds, dd, dq)
        train_loss = host["loss_sum"] / host["loss_count"] if host["loss_count"] else None
        host["loss_sum"], host["loss_count"] = 0.0, 0
        shown_train_loss = float("nan") if train_loss is None else train_loss
        # The guard keeps states by reference, and the steps donate theirs: copies both ways.
        restore = guard.validate(copy_state((params, opt_state, ema)), vloss,
                                 host["best_valid_loss"], train_loss)
        rolled_back = restore is not None
        if rolled_back:
            # A loss spike threw the model far from its optimum (Adam at a high learning
            # rate can collapse to near-zero forces, or the network's activations explode):
            # go back and go slower.
            params, good_opt_state, ema = copy_state(restore)
            opt_state = with_moments_of(opt_state, good_opt_state)  # the schedule goes on
            console.print(f"step {step}: diverged (validation loss {vloss:.3g}, best "
                          f"{host['best_valid_loss']:.3g}; training loss {shown_train_loss:.3g}, lowest "
                          f"{guard.best_train_loss:.3g}); restored the last good state, learning "
                          f"rate x {tcfg.plateau_factor:g}")
        if vloss < host["best_valid_loss"]:
            host["best_valid_loss"] = vloss
            host["bad_validations"] = host["plateau_bad"] = 0
            if root:
                save_model(output, mcfg, ema_params, refs, scale,
                           extra=_model_extra(config, step, m, origin))
        else:
            host["bad_validations"] += 1
            host["plateau_bad"] += 1
        # One learning-rate reduction for a rollback or a plateau, whichever comes first.
        if rolled_back or (tcfg.plateau_patience and host["plateau_bad"] >= tcfg.plateau_patience):
            opt_state = set_plateau_factor(opt_state, plateau_factor(opt_state) * tcfg.plateau_factor)
            host["plateau_bad"] = 0
        params, opt_state, ema = place((params, opt_state, ema))
        row = {
            "step": step,
            "epoch": step / n_batches,
            "elapsed_s": elapsed0 + clock(),
            "learning_rate": current_learning_rate(tcfg, step, opt_state),
            "train_loss": shown_train_loss,
            "valid_loss": vloss,
            "valid_energy_mae": m["energy_mae"],
            "valid_energy_rmse": m["energy_rmse"],
            "valid_forces_mae": m["forces_mae"],
            "valid_forces_rmse": m["forces_rmse"],
            "valid_stress_mae": m.get("stress_mae", float("nan")),
        }
        if root:
            _append_metrics(output / METRICS_FILE, row)
        return row

    progress = _make_progress(console, enabled=tcfg.progress and root)
    task = progress.add_task("training", total=max_steps, completed=step, info="")
    with progress:
        if start_step:
            console.print(f"resuming from step {start_step} ({output / LATEST})")
        else:
            validate()  # step-0 baseline: the learning curve starts from the untrained model
        while not stop_reason:
            epoch = step // n_batches
            if step >= max_steps:
                stop_reason = limit_reason
                break
            order = _epoch_order(tcfg.seed, epoch, len(train_set))
            batches = (train_graphs.batches(order, start=step % n_batches) if mesh is None
                       else prefetch(sharded_batches(train_graphs, mesh, order, start=step % n_batches),
                                     getattr(train_graphs, "prefetch", 0)))
            for graph, labels in batches:
                params, opt_state, ema, loss = train_step(params, opt_state, ema, graph, labels)
                step_losses.append(loss)
                step += 1
                if rate_anchor is None:  # the first step is compiled
                    keep_freed_memory()  # larger batches otherwise page-fault at every step
                    rate_anchor = (step, clock())
                if kill_at and step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                end = step >= max_steps
                over_time = clock() > budget_s
                if step % tcfg.valid_every == 0 or end or over_time:
                    flush_loss()
                    last_valid = validate()
                    if fit_decay_to_budget:
                        fit_decay_horizon()
                    elapsed = clock()
                    progress.update(task, info=(
                        f"epoch {step / n_batches:.1f} | {(step - start_step) / max(elapsed, 1e-9):.1f} steps/s | "
                        f"loss {last_valid['train_loss']:.3g} | valid E {last_valid['valid_energy_mae'] * 1e3:.2f} meV "
                        f"F {last_valid['valid_forces_mae'] * 1e3:.2f} meV/Å"))
                    if (tcfg.early_stopping_patience
                            and host["bad_validations"] >= tcfg.early_stopping_patience):
                        stop_reason = "early_stopping"
                if step % checkpoint_every == 0 or end or over_time or stop_reason:
                    checkpoint()
                progress.update(task, completed=step)
                if over_time:
                    stop_reason = "max_time"
                if end:
                    stop_reason = stop_reason or limit_reason
                if stop_reason:
                    break

    elapsed = clock()
    if root:
        _finish_plots(output, valid_set, valid_graphs, valid_predict)
    best = _best_row(output / METRICS_FILE) if root else {}  # rank 0 may still be writing it
    console.print(
        f"[bold]training stopped[/bold] ({stop_reason}) after {step} steps, "
        f"{step / n_batches:.1f} epochs; best valid: energy MAE {best.get('valid_energy_mae', float('nan')) * 1e3:.2f} meV, "
        f"forces MAE {best.get('valid_forces_mae', float('nan')) * 1e3:.2f} meV/Å"
    )
    return TrainResult(
        output=output,
        steps=step,
        epochs=step / n_batches,
        stop_reason=stop_reason,
        best_valid=best,
        steps_per_second=(step - start_step) / max(elapsed, 1e-9),
        resumed_from_step=start_step,
    )


def _origin(config: Config, init, mask) -> dict:
    """``model.yaml``'s record of a fine-tuning run's initial model (empty for a new model)."""
    if init is None:
        return {}
    trainable, frozen = count(mask)
    return {"init_from": {**init.provenance(), "freeze": config.training.freeze,
                          "reference_energies": config.training.reference_energies,
                          "trainable_parameters": trainable, "frozen_parameters": frozen}}


def _model_extra(config: Config, step: int, metrics: dict, origin: dict | None = None) -> dict:
    return {
        **(origin or {}),
        "trained": {
            "data": config.data.path,
            "step": int(step),
            "valid_energy_mae_eV": metrics["energy_mae"],
            "valid_forces_mae_eV_per_A": metrics["forces_mae"],
            **({"valid_stress_mae_eV_per_A3": metrics["stress_mae"]}
               if "stress_mae" in metrics else {}),
        }
    }


def _make_progress(console, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not enabled,
        transient=False,
    )


def _append_metrics(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: row[k] for k in METRIC_COLUMNS})
        fh.flush()
        os.fsync(fh.fileno())


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    with open(path) as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def _best_row(path: Path) -> dict:
    if not path.exists():
        return {}
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    best = min(rows, key=lambda r: float(r["valid_loss"]))
    return {k: float(v) for k, v in best.items()}


def _finish_plots(output: Path, valid_set: Dataset, valid_graphs: GraphDataset, predict) -> None:
    from so3krates.model_io import load_model

    plots = output / "plots"
    plots.mkdir(exist_ok=True)
    if (output / METRICS_FILE).exists():
        plot_learning_curves(output / METRICS_FILE, plots / "learning_curves.png")
    model = load_model(output, radial_knots=0)  # ``predict`` runs the network itself
    e, f, s = predict_dataset(predict, model.params, valid_graphs)
    plot_parity(valid_set.energy, e, np.concatenate(valid_set.forces), np.concatenate(f),
                plots / "parity_valid.png", title="validation set (best EMA weights)",
                stress_ref=valid_set.stress, stress_pred=s)
