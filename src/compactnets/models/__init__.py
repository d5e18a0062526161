"""Model families; importing this package registers every model."""

from . import nin, shufflenetv2

__all__ = ["nin", "shufflenetv2"]
