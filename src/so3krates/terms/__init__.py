"""Physical energy terms: per-atom energies of a padded graph, summed with the networks' by
``so3krates.potential`` (see ``docs/architecture.md``)."""

from so3krates.terms.lennard_jones import LennardJones

__all__ = ["LennardJones"]
