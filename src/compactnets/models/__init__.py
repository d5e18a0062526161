"""Model families; importing this package registers every model."""

from . import micronet, nin, shared_bases, shufflenetv2

__all__ = ["micronet", "nin", "shared_bases", "shufflenetv2"]
