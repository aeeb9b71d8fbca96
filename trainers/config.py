"""The main job's run configuration: every setting of a run, checked before any work.

`RunConfig` holds what `python -m trainers.train` reads from its flags (one
field per flag, same names and defaults); `trainers.run(config)` runs it. From
Python, without absl::

    from trainers import RunConfig, run

    report = run(RunConfig(model_dir="runs/py", epochs=3, export=False))

Building a `RunConfig` checks everything that needs no data and no TensorFlow
op (names, ranges, choices, the loss's argument names, the optimizer name,
`TF_CONFIG` for `strategy="multi_worker"`), so that a bad setting fails at once
with a `ValueError` naming the setting, before a strategy, a model or a file
exists. Checks that need the data (batch shape against the classes, the
dataset's files) happen in `run`, still before anything is trained or
written.
"""

import dataclasses
import math
import typing
from collections.abc import Mapping

from trainers import datasets

SCHEDULES = ("constant", "cosine", "exponential")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
MIXED_PRECISION_POLICIES = ("auto", "mixed_float16", "mixed_bfloat16")
PROJECTIONS = ("pca", "tsne")
LOG_LEVELS = ("quiet", "info", "debug")
KINDS = ("embedding", "proxy", "siamese", "triplet")
PAIR_SCORERS = ("distance", "weighted_l1")
# Sanity bounds: larger values are a typo, not a run (a 4096 x 4096 batch of images is
# tens of gigabytes).
MAX_IMAGE_SIZE = 4096
MAX_EMBEDDING_DIM = 65536
# Offline mining modes of triplet networks (no `--mining`: random triplets).
TRIPLET_MINING = ("easy", "semi-hard", "hard")
# Loss arguments that have a setting of their own (`--margin`, ...), besides `--loss_arg`.
NAMED_LOSS_SETTINGS = ("margin", "mining", "temperature", "scale", "distance")


def _setting(default, run=True):
    """A field; `run=False` marks settings that do not change what is trained."""
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata={"run": run})  # fmt: skip
    return dataclasses.field(default=default, metadata={"run": run})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of a main-job run (the flags of `python -m trainers.train`).

    Attributes mirror the flags; `python -m trainers.train --helpfull` describes
    each one. `loss_args` maps extra loss argument names to values (the flag
    `--loss_arg=name=value`, repeatable).

    Raises:
        ValueError: naming the setting, for any value out of range, an unknown
            name (listing the valid ones) or a malformed `TF_CONFIG`.
        TypeError: for a value of the wrong type.
    """

    # Data.
    dataset: str = _setting("digits")
    protocol: str = _setting("samples")
    pairs_file: str | None = _setting(None)
    train_fraction: float | None = _setting(None)
    image_size: int = _setting(64)
    tfrecord_image_key: str = _setting("image")
    tfrecord_label_key: str = _setting("label")
    tfds_split: str = _setting("all")
    tfds_data_dir: str | None = _setting(None, run=False)
    # Model.
    backbone: str = _setting("small_cnn")
    weights: str | None = _setting(None)
    embedding_dim: int = _setting(64)
    l2_normalize: bool = _setting(True)
    model_kind: str | None = _setting(None)
    pair_scorer: str = _setting("distance")
    # Loss.
    loss: str | None = _setting(None)
    margin: float | None = _setting(None)
    mining: str | None = _setting(None)
    temperature: float | None = _setting(None)
    scale: float | None = _setting(None)
    distance: str | None = _setting(None)
    loss_args: dict = _setting({})
    # Optimisation.
    classes_per_batch: int | None = _setting(None)
    samples_per_class: int = _setting(8)
    batch_size: int | None = _setting(None)
    positive_fraction: float = _setting(0.5)
    refresh_every: int | None = _setting(None)
    mining_pool: int | None = _setting(None)
    curriculum: str | None = _setting(None)
    views: int = _setting(0)
    optimizer: str = _setting("adam")
    learning_rate: float = _setting(1e-3)
    schedule: str = _setting("cosine")
    epochs: int = _setting(5)
    steps_per_epoch: int = _setting(30)
    jit_compile: bool = _setting(True, run=False)
    mixed_precision: bool = _setting(False)
    mixed_precision_policy: str = _setting("auto")
    strategy: str = _setting("default")
    tpu: str | None = _setting(None, run=False)
    cluster_timeout: float = _setting(600.0, run=False)
    seed: int = _setting(0)
    # Outputs.
    model_dir: str = _setting("runs/main", run=False)
    projection: str = _setting("pca", run=False)
    overwrite: bool = _setting(False, run=False)
    export: bool = _setting(True, run=False)
    tflite_variants: str = _setting("fp32,fp16,dynamic_int8,int8", run=False)
    log_level: str = _setting("quiet", run=False)

    def __post_init__(self):
        _check_types(self)
        _check_values(self)

    @classmethod
    def from_flags(cls, flag_values):
        """Builds the configuration from parsed absl flags (`flags.FLAGS`)."""
        from trainers import losses

        values = {}
        for field in dataclasses.fields(cls):
            if field.name == "loss_args":
                values["loss_args"] = losses.parse_loss_args(flag_values["loss_arg"].value)
            else:
                values[field.name] = flag_values[field.name].value
        return cls(**values)

    def identity(self):
        """The settings that define what is trained (stored in `flags.json`)."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.metadata.get("run", True)
        }

    @property
    def resolved_train_fraction(self):
        """`train_fraction`, or the protocol's default (0.7 of samples, 0.5 of classes)."""
        if self.train_fraction is not None:
            return self.train_fraction
        return 0.7 if self.protocol == "samples" else 0.5

    @property
    def total_steps(self):
        return self.epochs * self.steps_per_epoch

    @property
    def kind(self):
        """The model kind: `model_kind`, or `proxy` for a head loss, else `embedding`."""
        from trainers import kinds

        return kinds.resolve_kind(self.model_kind, self.loss)

    def loss_entry(self):
        """The registry entry of the loss (or head) this run trains with."""
        from trainers import kinds

        return kinds.loss_entry(self.kind, self.loss, self.pair_scorer)

    def loss_arguments(self):
        """The loss or head arguments the run sets: the named settings and `loss_args`."""
        from trainers import kinds

        args = {
            name: getattr(self, name)
            for name in NAMED_LOSS_SETTINGS
            if getattr(self, name) is not None
        }
        args.update(self.loss_args)
        return kinds.loss_arguments(self.kind, args)

    def curriculum_schedule(self):
        """`{first epoch: mining mode}` of `curriculum`, or `None`."""
        from trainers import kinds

        return kinds.parse_curriculum(self.curriculum, self.kind)

    @property
    def mining_refresh_every(self):
        """`refresh_every`, or once per epoch (so a curriculum's modes apply epoch by epoch)."""
        return self.refresh_every or self.steps_per_epoch

    def tflite_variant_list(self):
        """`tflite_variants` as a tuple (empty: SavedModel only)."""
        return tuple(v.strip() for v in self.tflite_variants.split(",") if v.strip())

    @property
    def global_batch_size(self):
        """Pairs or triplets per batch (siamese, triplet); `None` for P×K batches."""
        if self.kind not in ("siamese", "triplet"):
            return None
        return self.batch_size or (self.classes_per_batch or 10) * self.samples_per_class


def defaults():
    """`{field: default}` of `RunConfig` (the flags' defaults)."""
    return {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(RunConfig)
    }


def _plain(value):
    return dict(value) if isinstance(value, Mapping) else value


_TYPES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
}


def _base_type(annotation):
    """`(type, optional)` of a field annotation such as `float | None`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return (args[0] if args else annotation), bool(args)


def _check_types(config):
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        _, optional = _base_type(field.type)
        if value is None:
            if not optional:
                raise TypeError(f"`{field.name}` must not be None.")
            continue
        if field.name == "loss_args":
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise TypeError(f"`loss_args` must be a dict of argument names; got {value!r}.")
            object.__setattr__(config, "loss_args", dict(value))
            continue
        kind, _ = _base_type(field.type)
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                object.__setattr__(config, field.name, float(value))
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise TypeError(
                f"`{field.name}` must be {_TYPES[kind]}{' or None' if optional else ''}; "
                f"got {value!r}."
            )


def _choice(config, name, choices):
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"`--{name}` must be one of {list(choices)}; got {value!r}.")


def _at_least(config, name, low):
    value = getattr(config, name)
    if value is not None and value < low:
        raise ValueError(f"`--{name}` must be >= {low}; got {value}.")


def _check_plain_values(config):
    """The checks of single settings that need no TensorFlow (a typo is reported at once)."""
    _choice(config, "protocol", datasets.PROTOCOLS)
    _choice(config, "schedule", SCHEDULES)
    _choice(config, "strategy", STRATEGIES)
    _choice(config, "mixed_precision_policy", MIXED_PRECISION_POLICIES)
    _choice(config, "projection", PROJECTIONS)
    _choice(config, "log_level", LOG_LEVELS)
    kind, _ = datasets.check_spec(config.dataset)
    if (config.protocol == "reid") != (kind == "reid"):
        raise ValueError("`--protocol=reid` goes with `--dataset=reid:ROOT` (a Market-1501 root), "
                         f"and only with it; got {config.protocol!r} and {config.dataset!r}.")
    if config.protocol == "pairs" and (kind != "directory" or not config.pairs_file):
        raise ValueError("`--protocol=pairs` needs `--dataset=directory:PATH` (one folder per "
                         "identity) and `--pairs_file` (LFW's pairs.txt format).")
    if config.pairs_file and config.protocol != "pairs":
        raise ValueError("`--pairs_file` is read by `--protocol=pairs` only.")
    if config.train_fraction is not None and not 0.0 < config.train_fraction < 1.0:
        raise ValueError(f"`--train_fraction` must be in (0, 1); got {config.train_fraction}.")
    for name, low in (("epochs", 1), ("steps_per_epoch", 1), ("embedding_dim", 1),
                      ("image_size", 1), ("samples_per_class", 2), ("classes_per_batch", 2)):
        _at_least(config, name, low)  # fmt: skip
    if not (config.cluster_timeout > 0 and math.isfinite(config.cluster_timeout)):
        raise ValueError(f"`--cluster_timeout` must be > 0 seconds; got {config.cluster_timeout}.")
    if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
        raise ValueError(
            f"`--learning_rate` must be a finite number > 0; got {config.learning_rate}."
        )
    for name in ("margin", "temperature", "scale"):
        value = getattr(config, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"`--{name}` must be finite; got {value}.")
    _choice(config, "pair_scorer", PAIR_SCORERS)
    if config.model_kind is not None:
        _choice(config, "model_kind", KINDS)
    for name, low in (("batch_size", 2), ("refresh_every", 1), ("mining_pool", 2)):
        _at_least(config, name, low)
    if not 0.0 < config.positive_fraction < 1.0:
        raise ValueError(
            f"`--positive_fraction` must be in (0, 1); got {config.positive_fraction}."
        )
    if not 0 <= config.seed < 2**32:
        raise ValueError(f"`--seed` must be in [0, 2**32); got {config.seed}.")
    for name, high in (("image_size", MAX_IMAGE_SIZE), ("embedding_dim", MAX_EMBEDDING_DIM)):
        if getattr(config, name) > high:
            raise ValueError(f"`--{name}` must be <= {high}; got {getattr(config, name)}.")
    if config.views == 1 or config.views < 0:
        raise ValueError(
            f"`--views` must be 0 (labelled batches) or >= 2 (views of each sample); got "
            f"{config.views}."
        )


def _check_values(config):
    _check_plain_values(config)
    from trainers import backbones, distribution, losses  # these import TensorFlow

    kind = config.kind
    if config.batch_size is not None and kind not in ("siamese", "triplet"):
        raise ValueError(
            f"`--batch_size` sets pairs or triplets per batch (--model_kind=siamese or triplet); "
            f"--model_kind={kind} trains on --classes_per_batch x --samples_per_class batches."
        )
    if config.pair_scorer != "distance" and kind != "siamese":
        raise ValueError(f"`--pair_scorer` is for --model_kind=siamese; got --model_kind={kind}.")
    if kind == "triplet" and config.mining is not None and config.mining not in TRIPLET_MINING:
        raise ValueError(
            f"`--mining` of --model_kind=triplet is the offline mining mode, one of "
            f"{list(TRIPLET_MINING)} (none: random triplets); got {config.mining!r}."
        )
    if config.curriculum is not None and config.mining is not None:
        raise ValueError("Give `--mining` or `--curriculum`, not both (the curriculum sets it).")
    config.curriculum_schedule()
    from tfmetric.export import VARIANTS
    from tfmetric.export.tflite import check_variants

    unknown = sorted(set(config.tflite_variant_list()) - set(VARIANTS))
    if unknown:
        raise ValueError(f"`--tflite_variants` {unknown} are not among {list(VARIANTS)}.")
    try:
        check_variants(config.tflite_variant_list())  # the export's own check (duplicates)
    except ValueError as error:
        raise ValueError(f"`--tflite_variants={config.tflite_variants}`: {error}") from None
    backbones.check(config.backbone, config.weights)
    _check_strings(config)
    _check_unused(config)
    _check_loss_args(config)
    losses.check_arguments(config.loss_entry(), config.loss_arguments())
    if config.views and kind != "embedding":
        raise ValueError(
            f"`--views` trains an in-batch loss on augmented views without class labels "
            f"(--model_kind=embedding); got --model_kind={kind}."
        )
    check_optimizer(config.optimizer)
    if config.strategy == "multi_worker":
        distribution.cluster_spec()  # raises on a missing or malformed TF_CONFIG


def _check_strings(config):
    """Settings that name something must not be empty; `--distance` must be a distance."""
    for name in ("tfrecord_image_key", "tfrecord_label_key", "tfds_split", "tfds_data_dir",
                 "model_dir", "distance", "mining", "tpu", "loss", "curriculum"):
        value = getattr(config, name)
        if value is not None and not value.strip():
            raise ValueError(f"`--{name}` must not be empty; got {value!r}.")
    if config.distance is not None:
        from tfmetric import distances

        try:
            distances.get(config.distance)
        except ValueError as error:
            raise ValueError(f"`--distance`: {error}") from None


def _check_loss_args(config):
    """`loss_args` may repeat a named setting (`--margin`, ...) only with the same value."""
    for name in NAMED_LOSS_SETTINGS:
        value = getattr(config, name)
        if value is None or name not in config.loss_args:
            continue
        other = config.loss_args[name]
        if other != value:
            raise ValueError(
                f"`--{name}={value}` and `--loss_arg={name}={other}` disagree; give the "
                f"loss's {name} once."
            )


def _check_unused(config):
    """Settings that the rest of the run would ignore are an error, never silently dropped."""
    mines_offline = config.kind == "triplet" and (config.mining or config.curriculum)
    for name in ("refresh_every", "mining_pool"):
        if getattr(config, name) is not None and not mines_offline:
            raise ValueError(
                f"`--{name}` is for the offline mining of --model_kind=triplet (with --mining "
                f"or --curriculum); got --model_kind={config.kind} "
                f"{'without mining' if config.kind == 'triplet' else ''}".rstrip() + "."
            )
    if config.tpu is not None and config.strategy != "tpu":
        raise ValueError(f"`--tpu` is for --strategy=tpu; got --strategy={config.strategy}.")
    if config.positive_fraction != defaults()["positive_fraction"] and config.kind != "siamese":
        raise ValueError(
            f"`--positive_fraction={config.positive_fraction}` sets the matching pairs of "
            f"--model_kind=siamese batches; got --model_kind={config.kind}."
        )
    if config.mixed_precision_policy != defaults()["mixed_precision_policy"] and (
        not config.mixed_precision
    ):
        raise ValueError(
            f"`--mixed_precision_policy={config.mixed_precision_policy}` is used with "
            "--mixed_precision only; add --mixed_precision or drop the policy."
        )
    if config.pairs_file is not None and config.protocol == "pairs":
        import os

        if not os.path.isfile(config.pairs_file):
            raise ValueError(f"`--pairs_file` {config.pairs_file!r} does not exist.")


def optimizer_classes():
    """`{lower-case name: class}` of the Keras optimizers."""
    import keras

    return {
        name.lower(): cls
        for name, cls in vars(keras.optimizers).items()
        if isinstance(cls, type) and issubclass(cls, keras.optimizers.Optimizer)
        and cls is not keras.optimizers.Optimizer
    }  # fmt: skip


def check_optimizer(name):
    """Raises a ValueError listing the valid names for an unknown optimizer (builds nothing)."""
    classes = optimizer_classes()
    if str(name).lower().replace("_", "") not in {k.replace("_", "") for k in classes}:
        raise ValueError(f"Unknown `--optimizer` {name!r}; expected one of {sorted(classes)}.")
