"""tfmetric: metric learning for Keras 3 and TensorFlow."""

from tfmetric import (
    addons,
    callbacks,
    data,
    distances,
    export,
    index,
    layers,
    losses,
    metrics,
    models,
    store,
)

__version__ = "0.1.0"

__all__ = [
    "addons",
    "callbacks",
    "data",
    "distances",
    "export",
    "index",
    "layers",
    "losses",
    "metrics",
    "models",
    "store",
]
