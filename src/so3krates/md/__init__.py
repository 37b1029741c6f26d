"""Using a model: compiled MD engine, relaxation, minima search, trajectories, analysis.

Data flows one way: ``system`` (static structure data, the model's ``energy_fn``) →
``neighbours`` (in-loop Verlet lists) → ``integrators`` → ``engine`` (chunked ``lax.scan``
runs with the ``stability`` monitor) → ``run`` (the ``so3krates md`` command), and ``relax``,
``minima`` → ``explore``; ``trajectory``, ``restart`` and ``analysis`` handle the files.
"""

from so3krates.md.engine import Frames, RunSummary, Simulation
from so3krates.md.integrators import Ensemble
from so3krates.md.stability import StabilityCriteria
from so3krates.md.system import EnergyFn, System, model_energy_fn, positions_force_fn

__all__ = [
    "EnergyFn", "Ensemble", "Frames", "RunSummary", "Simulation", "StabilityCriteria", "System",
    "model_energy_fn", "positions_force_fn",
]
