"""A pickle reader that builds only plain data and numpy arrays, never arbitrary objects.

Dataset batches (CIFAR's python layout) and MegEngine checkpoints are pickles of dicts, lists, strings and
numpy arrays. ``pickle.load`` would run any callable such a file names; this unpickler refuses every global
outside the short list of numpy array constructors such files need, naming the file and the refused global.
"""

from __future__ import annotations

import pickle
from pathlib import Path

_ALLOWED_GLOBALS = {
    # numpy arrays, dtypes and scalars (numpy 1.x module path, then numpy 2.x)
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # byte strings of Python 2 pickles, ordered dicts of state dicts
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class UnsafePickleError(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str, **kwargs):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.source} asks to load {module}.{name}, which is not plain data; refusing to unpickle it"
        )


def load(path: str | Path, encoding: str = "ASCII"):
    """Unpickle ``path`` allowing only plain data and numpy arrays (``encoding='latin1'`` for Python 2 files)."""
    path = Path(path)
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, str(path), encoding=encoding).load()
