"""tfmetric: metric learning for Keras 3 and TensorFlow."""

from tfmetric import distances, losses, addons

__version__ = "0.1.0"
