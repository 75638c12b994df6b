"""nettrim: prune trained PyTorch ReLU networks with Net-Trim (NIPS 2017)."""

__version__ = "0.1.0"
