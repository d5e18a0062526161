"""Model families; importing this package registers every model."""

from . import nin, shared_bases, shufflenetv2

__all__ = ["nin", "shared_bases", "shufflenetv2"]
