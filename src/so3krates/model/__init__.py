"""The SO3krates network (see ``shared/docs/so3krates-model.md``)."""

from so3krates.model.so3krates import So3krates, with_radial_tables

__all__ = ["So3krates", "with_radial_tables"]
