"""The trainer's data: read (in memory, or disk-backed for an HDF5 dataset file), checked
against the model's terms, summarised for the model's initialisation, served as batches.

An in-memory dataset (every format but HDF5) is summarised and batched as a whole
(:class:`~so3krates.batching.GraphDataset`). A dataset file written by ``so3krates convert``
is read on demand: the training set's summary comes from one streaming pass, its batches
from :class:`~so3krates.streaming.StreamingGraphDataset`; the validation set is loaded.
"""

from __future__ import annotations

import numpy as np

from so3krates.batching import GraphDataset, GraphSource
from so3krates.config import Config, DataConfig, ModelConfig, TrainingConfig
from so3krates.data import DataError, Dataset, read_dataset
from so3krates.data.dataset import renumbered
from so3krates.data.hdf5 import HDF5Dataset, is_hdf5_path
from so3krates.model_io import check_efa_structures
from so3krates.streaming import StreamingGraphDataset
from so3krates.training.statistics import TrainingSummary, streaming_summary, summarise

# Options of reading a file that ``so3krates convert`` has applied already.
READING_OPTIONS = ("energy_key", "forces_key", "stress_key", "virial_key", "charge_key",
                   "spin_key", "dipole_key", "charges_key", "default_charge", "default_spin",
                   "energy_unit", "length_unit")


def load_training_data(config: Config) -> Dataset | HDF5Dataset:
    """The dataset named in ``config.data``: an HDF5 dataset file (``.h5``, ``.hdf5`` or
    ``data.format: hdf5``) disk-backed, any other in memory (``read_dataset``)."""
    d = config.data
    if d.path is None:
        raise DataError("no data given: pass --data PATH or set data.path in the config")
    if is_hdf5_path(d.path, d.format):
        _refuse_reading_options(d)
        return HDF5Dataset(d.path)
    return read_dataset(
        d.path,
        energy_key=d.energy_key,
        forces_key=d.forces_key,
        stress_key=d.stress_key,
        virial_key=d.virial_key,
        charge_key=d.charge_key,
        spin_key=d.spin_key,
        dipole_key=d.dipole_key,
        charges_key=d.charges_key,
        default_charge=d.default_charge,
        default_spin=d.default_spin,
        energy_unit=d.energy_unit,
        length_unit=d.length_unit,
        nan_labels=d.nan_labels,
        format=d.format,
    )


def _refuse_reading_options(d: DataConfig) -> None:
    """An HDF5 dataset holds labels read and converted already: options of reading are an
    error (they would be silently ignored)."""
    defaults = DataConfig()
    changed = [k for k in READING_OPTIONS if getattr(d, k) != getattr(defaults, k)]
    if changed:
        raise DataError(f"{d.path}: data.{changed[0]} applies when reading the original file: "
                        "pass it to `so3krates convert` (the HDF5 file holds labels read and "
                        "converted to eV and Å already)")


def check_training_data(data: Dataset | HDF5Dataset, terms, config: ModelConfig) -> None:
    """Refuse up front what the model's ``terms`` (a ``PhysicalTerms``) or its EFA cannot do
    with ``data``. Of a disk-backed dataset the structures' extents (EFA) are checked while
    the training set is summarised (:func:`training_sets`)."""
    terms.check_periodic(data.pbc)
    if isinstance(data, HDF5Dataset):
        terms.check_elements([np.asarray(data.elements)])
        check_efa_structures(config, None, data.pbc)
    else:
        terms.check_elements(data.numbers)
        check_efa_structures(config, data.positions, data.pbc)


def training_sets(data: Dataset | HDF5Dataset, split: dict[str, np.ndarray], terms,
                  config: ModelConfig) -> tuple[Dataset | HDF5Dataset, Dataset, TrainingSummary]:
    """``(train_set, valid_set, summary)``: the training set (disk-backed for an HDF5
    dataset), the validation set in memory, and the training set's summary (one streaming
    pass for a disk-backed one)."""
    train_set, valid_set = data.subset(split["train"]), data.subset(split["valid"])
    if not isinstance(data, HDF5Dataset):
        return train_set, valid_set, summarise(train_set, terms)
    valid_set = _checked(config, valid_set.load(), valid_set.indices)
    chunks = (_checked(config, chunk, train_set.indices[positions])
              for positions, chunk in train_set.chunks())
    return train_set, valid_set, streaming_summary(chunks, terms)


def _checked(config: ModelConfig, chunk: Dataset, file_indices: np.ndarray) -> Dataset:
    """``chunk``, its structures' extents checked for EFA (errors name file indices)."""
    try:
        check_efa_structures(config, chunk.positions, chunk.pbc)
    except ValueError as err:
        raise renumbered(err, file_indices) from None
    return chunk


def training_graphs(train_set: Dataset | HDF5Dataset, model: ModelConfig,
                    training: TrainingConfig, graph_options: dict) -> GraphSource:
    """The batches of ``train_set``: ``batch_size / devices`` structures each, in memory or
    read from disk per batch."""
    kind = StreamingGraphDataset if isinstance(train_set, HDF5Dataset) else GraphDataset
    return kind(train_set, model.cutoff, training.batch_size // training.devices,
                training.buckets, np.dtype(model.dtype), **graph_options)
