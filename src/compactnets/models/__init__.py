"""Model families; importing this package registers every model."""

from . import nin

__all__ = ["nin"]
