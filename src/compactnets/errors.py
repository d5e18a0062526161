"""Errors that describe bad input, importable without torch (the command line catches them at start-up).

The command prints each as one line and exits with status 2; their home modules re-export them.
"""


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, unsafe, or does not fit."""


class DataError(ValueError):
    """A dataset folder or file that cannot be read as the layout it claims."""


class ImageReadError(OSError):
    """An image file that cannot be decoded."""


class UnknownModelError(ValueError):
    pass


class ModelArgumentError(ValueError):
    """A constructor argument (``--model-kwargs``) the model does not take, or of the wrong type."""


class OptionError(ValueError):
    """A command-line option value outside its valid range, or options that cannot be combined."""


class ReproduceError(RuntimeError):
    """A ``compactnets reproduce`` table or row that cannot be run."""


class BinaryKernelUnavailable(RuntimeError):
    """The compiled binary kernel is missing or cannot run here (the float model still works)."""


class DeployError(ValueError):
    """An export that cannot be made or fails its check, or a deployed file that cannot be run."""
