"""tfmetric: metric learning for Keras 3 and TensorFlow."""

from tfmetric import distances, losses, addons
from tfmetric import callbacks, data, models  # noqa: F401
from tfmetric import layers  # noqa: F401
from tfmetric import export  # noqa: F401
from tfmetric import index, metrics  # noqa: F401

__version__ = "0.1.0"
