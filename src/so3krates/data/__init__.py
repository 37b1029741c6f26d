"""Reference data: an in-memory dataset of structures with labels, and readers for it."""

from so3krates.data.dataset import DataError, Dataset
from so3krates.data.readers import read_dataset

__all__ = ["DataError", "Dataset", "read_dataset"]
