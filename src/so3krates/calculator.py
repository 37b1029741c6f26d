"""ASE calculator for SO3krates models.

Compiles once per size bucket: the padded capacity (atoms, pairs) only grows, with headroom,
so moving atoms and small changes of the neighbour count never trigger recompilation.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from so3krates.batching import Capacity, single_graph


class So3kratesCalculator(Calculator):
    """ASE calculator: ``energy``, ``free_energy``, ``forces`` and per-atom ``energies``.

    Args:
        model: a loaded :class:`so3krates.model_io.Model` or a model directory.
        dtype: ``"float32"`` or ``"float64"`` when loading from a directory.
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies"]

    def __init__(self, model, dtype: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(model, (str, os.PathLike)):
            from so3krates.model_io import load_model

            model = load_model(model, dtype=dtype)
        self.model = model
        self._capacity: Capacity | None = None
        self._np_dtype = np.dtype(model.dtype)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        numbers = atoms.numbers
        if "numbers" in system_changes:
            self.model.check_elements(numbers)
        graph, self._capacity = single_graph(
            numbers,
            atoms.positions,
            atoms.cell[:],
            atoms.pbc,
            self.model.cutoff,
            self._capacity,
            dtype=self._np_dtype,
        )
        # One device-to-host transfer for all outputs, then slice off the padding on the host.
        pred = jax.device_get(self.model.predict(graph))
        n = len(atoms)
        energy = float(pred.energy[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": pred.forces[:n].astype(np.float64),
            "energies": pred.atomic_energies[:n].astype(np.float64),
        }
