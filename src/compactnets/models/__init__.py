"""Model families; importing this package registers every model."""

from . import micronet, nin

__all__ = ["micronet", "nin"]
