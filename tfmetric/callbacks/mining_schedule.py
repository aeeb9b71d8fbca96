"""Curriculum for metric losses: change the margin and the mining mode over epochs."""

import numbers

import keras

from tfmetric.losses import batch, triplet

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
            epoch_number = int(epoch)
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
    """Curriculum: sets the `margin` and/or `mining` of a compiled loss at each epoch.

    Easy triplets first, hard ones later (seed 002; FaceNet warns that the
    hardest negatives early in training can collapse the model): e.g. start
    with `mining="semi-hard"` and a small margin, then switch to
    `mining="hard"` and a larger margin. Works with any loss object that has
    `margin` / `mining` attributes read when the training step is traced
    (`tfmetric.losses.TripletLoss`, `TripletMarginLoss`,
    `PairContrastiveLoss`, `ContrastiveLoss`, ...).

    Those attributes are Python values baked into the traced (and, with
    `jit_compile=True`, XLA-compiled) training step, so a new value only takes
    effect in a new trace: when a value changes at the start of an epoch, the
    callback rebuilds the model's train and test functions
    (`make_train_function(force=True)`), without recompiling the model or
    touching the optimizer state. Each change costs one retrace/XLA compile.

    A schedule is a dict `{first_epoch: value}` (step-wise: the value of the
    largest key `<= epoch`; it must contain epoch 0) or a function
    `epoch -> value` (epochs count from 0).

    Args:
        margin: Schedule of the margin (non-negative floats), or `None` to
            leave it alone. Defaults to `None`.
        mining: Schedule of the mining mode (e.g. `"semi-hard"`, `"hard"`),
            or `None`. Defaults to `None`.
        loss: The loss object to modify. Defaults to `None`: the model's
            compiled loss (`model.loss`).
        verbose: Print the changes. Defaults to `0`.

    Attributes:
        history: List of `(epoch, margin, mining)` applied at each epoch start.

    Example:

    >>> schedule = tfmetric.callbacks.MiningSchedule(
    ...     margin={0: 0.1, 5: 0.5}, mining={0: "semi-hard", 10: "hard"})
    >>> schedule.value_at(7)
    (0.5, 'semi-hard')

    Reference:
        Schroff et al., "FaceNet", CVPR 2015 (semi-hard negatives to avoid
        collapse); Bengio et al., "Curriculum Learning", ICML 2009.
    """

    def __init__(self, margin=None, mining=None, loss=None, verbose=0):
        super().__init__()
        if margin is None and mining is None:
            raise ValueError("Give a `margin` and/or a `mining` schedule.")
        self.margin = _check_schedule(margin, "margin")
        self.mining = _check_schedule(mining, "mining")
        if isinstance(self.margin, dict):
            for value in self.margin.values():
                batch.check_margin(value)
        if isinstance(self.mining, dict):
            for value in self.mining.values():
                if not isinstance(value, str):
                    raise ValueError(f"`mining` values must be strings; got {value!r}.")
        self.loss = loss
        self.verbose = int(verbose)
        self.history = []

    def value_at(self, epoch):
        """Returns `(margin, mining)` for `epoch` (`None` for an unscheduled one)."""
        margin = None if self.margin is None else _value_at(self.margin, epoch)
        mining = None if self.mining is None else _value_at(self.mining, epoch)
        return margin, mining

    def _target(self):
        loss = self.loss if self.loss is not None else getattr(self.model, "loss", None)
        if loss is None:
            raise ValueError("`MiningSchedule` needs a compiled model (or the `loss` argument).")
        for attribute, schedule in (("margin", self.margin), ("mining", self.mining)):
            if schedule is not None and not hasattr(loss, attribute):
                raise ValueError(
                    f"`MiningSchedule` schedules `{attribute}` but the loss "
                    f"{type(loss).__name__} has no `{attribute}` attribute."
                )
        return loss

    def on_train_begin(self, logs=None):
        self._target()

    def on_epoch_begin(self, epoch, logs=None):
        loss = self._target()
        margin, mining = self.value_at(epoch)
        changed = False
        if margin is not None:
            margin = batch.check_margin(margin)
            if loss.margin != margin:
                loss.margin = margin
                changed = True
        if mining is not None:
            if isinstance(loss, triplet.TripletLoss):
                batch.check_choice(mining, "mining", triplet.MINING_MODES)
            if loss.mining != mining:
                loss.mining = mining
                changed = True
        if changed:
            # Python attributes are read when tracing: force a new trace.
            self.model.make_train_function(force=True)
            self.model.make_test_function(force=True)
            if self.verbose:
                print(f"MiningSchedule: epoch {epoch}: margin={margin}, mining={mining}")
        self.history.append((epoch, getattr(loss, "margin", None), getattr(loss, "mining", None)))

    def get_config(self):
        def plain(schedule):
            if callable(schedule):
                raise ValueError("A function schedule cannot be serialized; use a dict.")
            return None if schedule is None else {str(k): v for k, v in schedule.items()}

        return {
            "margin": plain(self.margin),
            "mining": plain(self.mining),
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
