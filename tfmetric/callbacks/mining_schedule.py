"""Curriculum for metric learning: the margin and the mining mode over epochs, as variables."""

import numbers

import keras
import tensorflow as tf

from tfmetric._src import validation
from tfmetric.losses import triplet

__all__ = ["MiningSchedule"]


def _check_schedule(schedule, name):
    if schedule is None or callable(schedule):
        return schedule
    if not isinstance(schedule, dict) or not schedule:
        raise ValueError(
            f"`{name}` must be None, a non-empty dict {{epoch: value}} or a function of the "
            f"epoch; got {schedule!r}."
        )
    checked = {}
    for epoch, value in schedule.items():
        try:
            epoch_number = -1 if isinstance(epoch, bool) else int(epoch)
        except (TypeError, ValueError):
            epoch_number = -1
        if epoch_number < 0 or (isinstance(epoch, numbers.Number) and epoch != epoch_number):
            raise ValueError(f"`{name}` keys must be epochs (integers >= 0); got {epoch!r}.")
        checked[epoch_number] = value
    if 0 not in checked:
        raise ValueError(f"`{name}` must give a value for epoch 0; got keys {sorted(checked)}.")
    return dict(sorted(checked.items()))


def _value_at(schedule, epoch):
    if callable(schedule):
        return schedule(epoch)
    value = None
    for start, scheduled in schedule.items():
        if start <= epoch:
            value = scheduled
    return value


@keras.saving.register_keras_serializable(package="tfmetric")
class MiningSchedule(keras.callbacks.Callback):
    """Curriculum: sets the margin and the mining mode at each epoch, online and offline.

    Easy triplets first, hard ones later (FaceNet warns that the hardest
    negatives early in training can collapse the model): e.g.
    `mining={0: "easy", 2: "semi-hard", 5: "hard"}` and
    `margin={0: 0.1, 5: 0.3}`. One schedule drives both mining paths:

    - **online**: the compiled loss (`loss`, default `model.loss`). Losses
      with a `use_variables` method (`tfmetric.losses.TripletLoss`,
      `TripletMarginLoss`, `PairContrastiveLoss`) read the margin and the mode
      from this schedule's variables at every step, so changing them neither
      retraces nor recompiles the training step (`jit_compile=True`
      included). Other losses with `margin` / `mining` attributes get the new
      Python value and a rebuilt train function (one retrace per change);
    - **offline**: samplers built with `mining=schedule`
      (`tfmetric.data.triplet_dataset`, `tfmetric.data.pair_dataset`) read the
      mode variable in their `tf.data` graph at each refresh.

    The variables hold the value for the current epoch: `margin_variable`
    (float32) and `mining_variable` (int32, an index into `MODES`). They are
    set at construction to epoch 0's values and at the start of every epoch.

    A schedule is a dict `{first_epoch: value}` (step-wise: the value of the
    largest key `<= epoch`; it must contain epoch 0) or a function
    `epoch -> value` (epochs count from 0). Mining modes are `"easy"`
    (closest positive, farthest negative), `"semi-hard"`, `"hard"` and, for
    online losses only, `"all"`.

    Args:
        margin: Schedule of the margin (non-negative floats), or `None` to
            leave it alone. Defaults to `None`.
        mining: Schedule of the mining mode, or `None`. Defaults to `None`.
        loss: The loss object to drive. Defaults to `None`: the model's
            compiled loss (`model.loss`). With a `mining` schedule, a loss
            without a `mining` attribute is allowed when a sampler reads the
            schedule. Not in `get_config` (a live object, not a setting): a
            schedule rebuilt from its config drives the model's compiled
            loss.
        verbose: Print the changes. Defaults to `0`.

    Attributes:
        history: List of `(epoch, margin, mining)` applied at each epoch start.
        margin_variable: The margin of the current epoch, or `None`.
        mining_variable: The index in `MODES` of the current mining mode, or
            `None`.

    Example:

    >>> schedule = tfmetric.callbacks.MiningSchedule(
    ...     margin={0: 0.1, 5: 0.5}, mining={0: "easy", 3: "semi-hard", 10: "hard"})
    >>> schedule.value_at(7)
    (0.5, 'semi-hard')
    >>> schedule.MODES[int(schedule.mining_variable.numpy())]
    'easy'

    Reference:
        Schroff et al., "FaceNet", CVPR 2015 (semi-hard negatives to avoid
        collapse); Bengio et al., "Curriculum Learning", ICML 2009.
    """

    MODES = ("easy", "semi-hard", "hard", "all")

    def __init__(self, margin=None, mining=None, loss=None, verbose=0):
        super().__init__()
        # (modes, user) pairs: samplers that support only some of the modes.
        self._requirements = []
        if margin is None and mining is None:
            raise ValueError("Give a `margin` and/or a `mining` schedule.")
        self.margin = _check_schedule(margin, "margin")
        self.mining = _check_schedule(mining, "mining")
        if isinstance(self.margin, dict):
            for value in self.margin.values():
                validation.check_number(value, "margin")
        if isinstance(self.mining, dict):
            for value in self.mining.values():
                self._check_mode(value)
        self.loss = loss
        self.verbose = (
            int(verbose) if isinstance(verbose, bool) else validation.check_int(verbose, "verbose", 0)
        )
        self.history = []
        self._bound_loss = None
        margin0, mining0 = self.value_at(0)
        self.margin_variable = None
        self.mining_variable = None
        if self.margin is not None:
            self.margin_variable = tf.Variable(
                validation.check_number(margin0, "margin"),
                dtype=tf.float32,
                trainable=False,
                name="margin",
            )
        if self.mining is not None:
            self.mining_variable = tf.Variable(
                self._code(mining0), dtype=tf.int32, trainable=False, name="mining"
            )

    def _check_mode(self, value):
        if not isinstance(value, str) or value not in self.MODES:
            raise ValueError(f"`mining` values must be one of {list(self.MODES)}; got {value!r}.")
        for modes, user in self._requirements:
            if value not in modes:
                raise ValueError(
                    f"`mining` schedule sets {value!r}, which {user} does not support "
                    f"(modes {list(modes)})."
                )
        return value

    def _code(self, mode):
        return self.MODES.index(self._check_mode(mode))

    def value_at(self, epoch):
        """Returns `(margin, mining)` for `epoch` (`None` for an unscheduled one)."""
        margin = None if self.margin is None else _value_at(self.margin, epoch)
        mining = None if self.mining is None else _value_at(self.mining, epoch)
        return margin, mining

    def scheduled_mining_modes(self):
        """The mining modes of a dict schedule (a function's are checked each epoch)."""
        if self.mining is None:
            return ()
        if callable(self.mining):
            return tuple(dict.fromkeys([_value_at(self.mining, 0)]))
        return tuple(dict.fromkeys(self.mining.values()))

    def require_modes(self, modes, user):
        """Declares that `user` (e.g. "offline mining") reads the mode and supports only `modes`.

        Raises:
            ValueError: when the schedule sets a mode outside `modes` (now for
                a dict schedule, at that epoch for a function).
        """
        self._requirements.append((tuple(modes), user))
        for mode in self.scheduled_mining_modes():
            self._check_mode(mode)

    def assign(self, epoch):
        """Sets the variables to the values of `epoch`; returns `(margin, mining)`."""
        margin, mining = self.value_at(epoch)
        if margin is not None:
            margin = validation.check_number(margin, "margin")
            self.margin_variable.assign(margin)
        if mining is not None:
            self.mining_variable.assign(self._code(mining))
        return margin, mining

    def _target(self):
        loss = self.loss if self.loss is not None else getattr(self.model, "loss", None)
        if loss is None:
            raise ValueError("`MiningSchedule` needs a compiled model (or the `loss` argument).")
        for attribute, schedule in (("margin", self.margin), ("mining", self.mining)):
            if schedule is None or hasattr(loss, attribute):
                continue
            if attribute == "mining" and self._requirements:
                continue  # the mode drives a sampler only
            raise ValueError(
                f"`MiningSchedule` schedules `{attribute}` but the loss "
                f"{type(loss).__name__} has no `{attribute}` attribute."
            )
        return loss

    def _drives(self, loss, attribute):
        schedule = self.margin if attribute == "margin" else self.mining
        return schedule is not None and hasattr(loss, attribute)

    def on_train_begin(self, logs=None):
        loss = self._target()
        # Under JAX a compiled step reads only the model's state: a variable of the
        # callback would be frozen at its traced value, so the loss keeps plain
        # attributes and each change retraces the step (on_epoch_begin).
        bindable = keras.backend.backend() == "tensorflow"
        if (
            bindable
            and callable(getattr(loss, "use_variables", None))
            and self._bound_loss is not loss
        ):
            loss.use_variables(
                margin=self.margin_variable if self._drives(loss, "margin") else None,
                mining=self.mining_variable if self._drives(loss, "mining") else None,
                modes=self.MODES,
            )
            self._bound_loss = loss
            # The next trace reads the variables; later changes need no retrace.
            self.model.make_train_function(force=True)
            self.model.make_test_function(force=True)

    def on_epoch_begin(self, epoch, logs=None):
        loss = self._target()
        margin, mining = self.assign(epoch)
        changed = False
        if margin is not None and hasattr(loss, "margin") and loss.margin != margin:
            loss.margin = margin
            changed = True
        if mining is not None and hasattr(loss, "mining"):
            if isinstance(loss, triplet.TripletLoss):
                validation.check_choice(mining, "mining", triplet.MINING_MODES)
            if loss.mining != mining:
                loss.mining = mining
                changed = True
        if changed and self._bound_loss is not loss:
            # Python attributes are read when tracing: force a new trace.
            self.model.make_train_function(force=True)
            self.model.make_test_function(force=True)
        if changed and self.verbose:
            print(f"MiningSchedule: epoch {epoch}: margin={margin}, mining={mining}")
        self.history.append(
            (epoch, getattr(loss, "margin", margin), getattr(loss, "mining", mining))
        )

    def get_config(self):
        def plain(schedule):
            if callable(schedule):
                raise ValueError("A function schedule cannot be serialized; use a dict.")
            return None if schedule is None else {str(k): v for k, v in schedule.items()}

        return {
            "margin": plain(self.margin),
            "mining": plain(self.mining),
            "loss": None if self.loss is None else keras.saving.serialize_keras_object(self.loss),
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("loss") is not None:
            config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)
