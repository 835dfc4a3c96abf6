"""fl-split: communication-efficient split learning and federated learning on Flower."""

__version__ = "0.1.0"
