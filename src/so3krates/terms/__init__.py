"""Physical energy terms: per-atom energies of a padded graph, summed with the networks' by
``so3krates.potential`` (see ``docs/architecture.md``): Lennard-Jones, and the long-range
terms of SpookyNet / SO3LR (ZBL, damped Coulomb, Tkatchenko-Scheffler dispersion, the Ewald
sum) with their configured sum :class:`~so3krates.terms.physical.PhysicalTerms`."""

from so3krates.terms.lennard_jones import LennardJones
from so3krates.terms.physical import PhysicalTerms

__all__ = ["LennardJones", "PhysicalTerms"]
