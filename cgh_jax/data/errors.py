"""Errors of the input pipeline. Messages read ``<what is wrong>; <what to do>``."""

from __future__ import annotations


class DataError(ValueError):
    """The configured data cannot be read as it is (missing, corrupt or inconsistent files)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A file or directory that the data config names does not exist."""


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset has not been downloaded and prepared in the data dir."""
