"""Loss arguments read from variables, so a curriculum changes them without retracing."""

import keras
import numpy as np
from keras import ops

from tfmetric._src import validation

__all__ = ["ScheduledArguments", "margin_value"]


def margin_value(margin, maximum=None):
    """A validated float margin, or a scheduled margin tensor/variable passed through as float32.

    Numbers (and 0-d NumPy arrays) are checked by `validation.check_number`;
    tensors and variables (a `MiningSchedule`'s margin, a traced value) are
    used as given. Anything else (a string, a list, `None`) is a `ValueError`
    naming `margin`. `maximum` bounds the magnitude where the loss squares the
    margin.
    """
    if isinstance(margin, np.ndarray) and margin.shape == ():
        margin = margin.item()
    if ops.is_tensor(margin) or isinstance(margin, (keras.Variable, keras.KerasTensor)):
        dtype = keras.backend.standardize_dtype(margin.dtype)
        if not dtype.startswith(("float", "bfloat", "int", "uint")):
            raise ValueError(f"`margin` must be a number or a numeric tensor; got dtype {dtype}.")
        return ops.cast(ops.convert_to_tensor(margin), "float32")
    return validation.check_number(margin, "margin", maximum=maximum)


class ScheduledArguments:
    """Mixin for losses whose `margin` (and `mining`) a `MiningSchedule` drives.

    After `use_variables(...)`, `call` reads the current values from the
    variables, so the traced (and XLA-compiled) training step follows them
    without a retrace. The Python attributes stay what `get_config` saves.
    """

    _margin_variable = None
    _mining_variable = None
    _mining_modes = None

    def use_variables(self, margin=None, mining=None, modes=None):
        """Reads `margin` and/or the mining mode from variables at every call.

        Args:
            margin: A float variable holding the margin, or `None`.
            mining: An integer variable holding an index into `modes`, or
                `None`.
            modes: The mode names `mining` indexes.
        """
        if mining is not None and not hasattr(self, "mining"):
            raise ValueError(f"{type(self).__name__} has no `mining` to schedule.")
        if mining is not None and modes is None:
            raise ValueError("`modes` must name the modes that `mining` indexes.")
        self._margin_variable = margin
        self._mining_variable = mining
        self._mining_modes = None if modes is None else tuple(modes)

    def current_margin(self):
        """The margin to use now: the scheduled variable's value, else `self.margin`."""
        if self._margin_variable is None:
            return self.margin
        return ops.cast(ops.convert_to_tensor(self._margin_variable), "float32")
