"""Typed errors a user can cause. The CLI turns each into one line and exit code 2."""


class AttattrError(Exception):
    """Base class of every error caused by input (a bad path, text, name or file)."""


class InputError(AttattrError, ValueError):
    """Bad argument value: empty text, steps < 1, unknown rule, target out of range, ..."""


class DataError(AttattrError):
    """A dataset or data file cannot be used: missing file or column, empty file, unknown name."""


class ModelError(AttattrError):
    """A model cannot be loaded or used: unknown recipe, missing weights, unreachable hub id."""


class UnsupportedModelError(ModelError):
    """The architecture's attention does not run through transformers' attention interface,
    or the model has no sequence-classification head."""


class ResultFileError(AttattrError):
    """A saved result (attributions, patterns, ...) is missing, truncated or corrupt."""
