"""so3krates: SO3krates machine-learned force fields in JAX.

Importing the package enables JAX's 64-bit mode: per-element reference energies and the final
energy sum are kept in float64 even for float32 models (network weights stay float32).
"""

import jax

jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"

from so3krates.calculator import So3kratesCalculator  # noqa: E402
from so3krates.model_io import load_model  # noqa: E402

__all__ = ["So3kratesCalculator", "load_model", "__version__"]
