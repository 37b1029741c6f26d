"""The SO3krates network (see ``shared/docs/so3krates-model.md``)."""

from so3krates.model.so3krates import So3krates, inference_params

__all__ = ["So3krates", "inference_params"]
