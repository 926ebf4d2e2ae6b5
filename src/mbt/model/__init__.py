"""The MBT network: tokenisers, fusion layers, the two-stream model and weight loading."""

from mbt.model.mbt import MBT, build_layers

__all__ = ["MBT", "build_layers"]
