r"""Trains, evaluates and exports a metric-learning embedder.

    python -m trainers.train                       # digits, small CNN, triplet loss
    python -m trainers.train --dataset=tfds:cars196 --protocol=classes \
        --backbone=resnet50 --weights=imagenet --image_size=224 --loss=multi_similarity
    python -m trainers.train --loss=arcface --scale=30 --margin=0.3

Steps: load the data and split it by `--protocol`; build the embedder
(`--backbone`, `--embedding_dim`, `--l2_normalize`) and the loss or head
(`--loss` with its arguments); train on class-balanced batches of
`--classes_per_batch` x `--samples_per_class` samples, with a checkpoint every
epoch in `--model_dir/backup` (a killed run restarts where it stopped when run
again with the same flags); evaluate on the held-out split beside the raw-input
baseline; write everything to `--model_dir`:

- `flags.json` (the run's flags; another run's flags are refused unless
  `--overwrite`), `history.csv`, `logs/` (TensorBoard scalars and the embedding
  projector: `logs/projector`);
- `report.json` and the printed table: held-out Precision@1, MAP@R,
  R-precision, verification ROC AUC and EER, model vs raw input;
- `training_curves.png`, `embeddings_2d.png`, `roc_curve.png`,
  `nearest_neighbors.png`;
- `model.keras` (the embedder) and, unless `--noexport`, `export/` (SavedModel,
  TFLite, parity report).
"""

import os
import shutil
import sys
import time

from absl import app, flags, logging

from trainers import datasets

FLAGS = flags.FLAGS

# Data.
flags.DEFINE_string(
    "dataset", "digits", "digits | directory:PATH | tfrecord:GLOB | npz:PATH | tfds:NAME."
)
flags.DEFINE_enum("protocol", "samples", list(datasets.PROTOCOLS),
                  "samples: split each class (closed set); classes: hold out unseen classes (open set).")
flags.DEFINE_float("train_fraction", None,
                   "Fraction of each class's samples (samples; default 0.7) or of the classes "
                   "(classes; default 0.5, as for CUB-200 and Cars-196) used for training.")
flags.DEFINE_integer("image_size", 64, "Side images are resized to when their sizes differ (not digits).")
flags.DEFINE_string("tfrecord_image_key", "image", "tfrecord: feature holding the encoded image.")
flags.DEFINE_string("tfrecord_label_key", "label", "tfrecord: int64 feature holding the class.")
flags.DEFINE_string("tfds_split", "all", "tfds: split(s) to pool before `--protocol` splits them.")
flags.DEFINE_string("tfds_data_dir", None, "tfds: data directory (default: TFDS's).")
# Model.
flags.DEFINE_string("backbone", "small_cnn", "small_cnn | mlp | a keras.applications name (resnet50, ...).")
flags.DEFINE_string("weights", None, "Backbone weights for keras.applications: imagenet or a file.")
flags.DEFINE_integer("embedding_dim", 64, "Embedding size.")
flags.DEFINE_boolean("l2_normalize", True, "End the embedder with L2 normalisation.")
# Loss.
flags.DEFINE_string("loss", "triplet", "A tfmetric loss or head by name (an unknown name lists them).")
flags.DEFINE_float("margin", None, "Loss/head `margin` (default: the class's).")
flags.DEFINE_string("mining", None, "Loss `mining`, e.g. semi-hard | hard | all.")
flags.DEFINE_float("temperature", None, "Loss/head `temperature`.")
flags.DEFINE_float("scale", None, "Head `scale` (ArcFace, CosFace...).")
flags.DEFINE_string("distance", None, "Loss `distance` (euclidean, cosine, ...); also used to evaluate.")
flags.DEFINE_multi_string("loss_arg", [], "Any other loss argument as name=value (repeatable).")
# Optimisation.
flags.DEFINE_integer("classes_per_batch", None,
                     "P: classes per batch (default: min(10, training classes)).")
flags.DEFINE_integer("samples_per_class", 8, "K: samples per class in a batch.")
flags.DEFINE_string("optimizer", "adam", "A Keras optimizer name (adam, adamw, sgd, rmsprop, lion...).")
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.")
flags.DEFINE_enum("schedule", "cosine", ["constant", "cosine", "exponential"], "Learning-rate schedule.")
flags.DEFINE_integer("epochs", 10, "Epochs.")
flags.DEFINE_integer("steps_per_epoch", 50, "Batches per epoch.")
flags.DEFINE_boolean("jit_compile", True, "Compile the train step with XLA.")
flags.DEFINE_boolean("mixed_precision", False, "mixed_float16 on GPU, mixed_bfloat16 elsewhere.")
flags.DEFINE_enum(
    "mixed_precision_policy", "auto", ["auto", "mixed_float16", "mixed_bfloat16"],
    "Policy used by --mixed_precision (auto: the one that suits the device).",
)  # fmt: skip
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
                  "tf.distribute strategy.")
flags.DEFINE_string("tpu", None, "TPU address for --strategy=tpu (default: the local TPU).")
flags.DEFINE_integer("seed", 0, "Random seed (data split, batches, weights).")
# Outputs.
flags.DEFINE_string("model_dir", "runs/main", "Where checkpoints, logs, report and model go.")
flags.DEFINE_enum("projection", "pca", ["pca", "tsne"],
                  "2-D projection of the held-out embeddings plot (t-SNE is slower).")
flags.DEFINE_boolean("overwrite", False, "Replace the outputs of a different run in --model_dir.")
flags.DEFINE_boolean("export", True, "Export (SavedModel + TFLite + parity); --noexport skips it.")

# Flags that define a run: a --model_dir holding a run with other values is refused.
RUN_FLAGS = (
    "dataset", "protocol", "train_fraction", "image_size", "tfrecord_image_key",
    "tfrecord_label_key", "tfds_split", "backbone", "weights", "embedding_dim", "l2_normalize",
    "loss", "margin", "mining", "temperature", "scale", "distance", "loss_arg",
    "classes_per_batch", "samples_per_class", "optimizer", "learning_rate", "schedule", "epochs",
    "steps_per_epoch", "mixed_precision", "mixed_precision_policy", "strategy", "seed",
)  # fmt: skip
FLAGS_FILE = "flags.json"
BACKUP_DIR = "backup"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
# What this program writes in --model_dir; --overwrite removes these and nothing else.
OWN_OUTPUTS = (
    FLAGS_FILE, BACKUP_DIR, HISTORY_FILE, MODEL_FILE, "logs", "export", "report.json",
    "training_curves.png", "embeddings_2d.png", "roc_curve.png", "nearest_neighbors.png",
)  # fmt: skip


class InputError(ValueError):
    """Bad flags or data, found before training: reported in one line."""


def run_flags():
    return {name: FLAGS[name].value for name in RUN_FLAGS}


def prepare_model_dir(model_dir, current, overwrite):
    """Creates `model_dir`; refuses one that holds another run unless `overwrite`.

    Returns:
        `True` when a checkpoint of this same run is there to resume from.
    """
    import json

    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ValueError(f"`--model_dir={model_dir}` exists and is not a directory.")
    os.makedirs(model_dir, exist_ok=True)
    flags_path = os.path.join(model_dir, FLAGS_FILE)
    stored = None
    if os.path.exists(flags_path):
        with open(flags_path) as f:
            stored = json.load(f)
    entries = set(os.listdir(model_dir))
    if stored is None and entries:
        reason = f"holds files that are not a trainer run ({sorted(entries)[:5]})"
    elif stored is not None and stored != current:
        changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
        details = ", ".join(f"--{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in changed)
        reason = f"holds a different run ({details})"
    else:
        reason = None
    if reason is not None:
        if not overwrite:
            raise ValueError(
                f"`--model_dir={model_dir}` {reason}; pass --overwrite to replace it, "
                "or choose another --model_dir."
            )
        for name in OWN_OUTPUTS:
            path = os.path.join(model_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    from trainers import outputs

    outputs.write_json(flags_path, current)
    resuming = os.path.isdir(os.path.join(model_dir, BACKUP_DIR))
    if not resuming:
        for name in (HISTORY_FILE, "logs"):
            path = os.path.join(model_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    return resuming


def make_strategy(name, tpu=None):
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # The default all-reduce aborted ("collective instance ... shape mismatch")
        # beside the losses' own all-gather; reducing to one device is exact.
        return tf.distribute.MirroredStrategy(
            cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        raise ValueError(f"`--strategy=tpu`: no TPU found ({error}).") from None
    return tf.distribute.TPUStrategy(resolver)


def make_optimizer(name, learning_rate, schedule, total_steps):
    import keras

    if not learning_rate > 0:
        raise ValueError(f"`--learning_rate` must be > 0; got {learning_rate}.")
    if schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(learning_rate, total_steps, alpha=0.01)
    elif schedule == "exponential":
        rate = keras.optimizers.schedules.ExponentialDecay(learning_rate, max(1, total_steps // 4), 0.5)
    else:
        rate = learning_rate
    try:
        optimizer = keras.optimizers.get({"class_name": name, "config": {"learning_rate": rate}})
    except ValueError:
        valid = sorted(
            n.lower() for n, c in vars(keras.optimizers).items()
            if isinstance(c, type) and issubclass(c, keras.optimizers.Optimizer)
            and c is not keras.optimizers.Optimizer
        )  # fmt: skip
        raise ValueError(f"Unknown `--optimizer` {name!r}; expected one of {valid}.") from None
    return optimizer


def loss_arguments():
    from trainers import losses

    args = {
        name: FLAGS[name].value
        for name in ("margin", "mining", "temperature", "scale", "distance")
        if FLAGS[name].value is not None
    }
    args.update(losses.parse_loss_args(FLAGS.loss_arg))
    return args


def build_training_model(entry, loss, embedder, optimizer, jit_compile):
    """Compiles the model that trains: the embedder with a loss, or a ProxyModel with a head."""
    if entry.is_head:
        from tfmetric.models import ProxyModel

        model = ProxyModel(embedder, loss)
        model.compile(optimizer=optimizer, jit_compile=jit_compile)
        return model
    embedder.compile(optimizer=optimizer, loss=loss, jit_compile=jit_compile)
    return embedder


def read_history(path):
    """Per-epoch logs from the CSV logger; a re-run epoch keeps its last row."""
    import csv

    if not os.path.exists(path):
        return {}
    rows = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            rows[int(row["epoch"])] = row
    history = {}
    for epoch in sorted(rows):
        for key, value in rows[epoch].items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if key != "epoch":
                history.setdefault(key, []).append(number)
    return history


def main(argv):
    del argv
    started = time.time()
    import keras
    import numpy as np
    import tensorflow as tf

    from tfmetric import distances as distances_lib
    from tfmetric.callbacks import RetrievalEvaluation
    from trainers import backbones, evaluation, exporting, outputs, pipeline
    from trainers import losses as losses_lib

    # Everything that can fail on bad input is checked before any training.
    try:
        current = run_flags()
        entry = losses_lib.lookup(FLAGS.loss)
        data = datasets.load(
            FLAGS.dataset, FLAGS.image_size, FLAGS.tfrecord_image_key, FLAGS.tfrecord_label_key,
            FLAGS.tfds_split, FLAGS.tfds_data_dir,
        )  # fmt: skip
        train_fraction = FLAGS.train_fraction or (0.7 if FLAGS.protocol == "samples" else 0.5)
        train, test = datasets.split(data, FLAGS.protocol, train_fraction, FLAGS.seed)
        if FLAGS.epochs < 1 or FLAGS.steps_per_epoch < 1:
            raise ValueError("`--epochs` and `--steps_per_epoch` must be >= 1.")
        if FLAGS.embedding_dim < 1:
            raise ValueError(f"`--embedding_dim` must be >= 1; got {FLAGS.embedding_dim}.")
        backbones.check(FLAGS.backbone)
        num_train_classes = len(np.unique(train.y))
        loss_args = loss_arguments()
        entry, _ = losses_lib.build(entry.name, loss_args, num_train_classes)
        classes_per_batch = FLAGS.classes_per_batch or min(10, num_train_classes)
        pipeline.check_batch(train.y, classes_per_batch, FLAGS.samples_per_class)
        total_steps = FLAGS.epochs * FLAGS.steps_per_epoch
        make_optimizer(FLAGS.optimizer, FLAGS.learning_rate, FLAGS.schedule, total_steps)
        resuming = prepare_model_dir(FLAGS.model_dir, current, FLAGS.overwrite)
    except ValueError as error:
        raise InputError(str(error)) from None

    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.mixed_precision:
        policy = FLAGS.mixed_precision_policy
        if policy == "auto":
            gpu = tf.config.list_physical_devices("GPU")
            policy = "mixed_float16" if gpu else "mixed_bfloat16"
        keras.mixed_precision.set_global_policy(policy)
    strategy = make_strategy(FLAGS.strategy, FLAGS.tpu)
    # Training labels are remapped to 0..C-1 (heads need dense class ids).
    _, train_labels = np.unique(train.y, return_inverse=True)
    dataset = pipeline.training_dataset(
        train.x, train_labels.astype(np.int32), classes_per_batch, FLAGS.samples_per_class,
        FLAGS.seed,
    )  # fmt: skip
    with strategy.scope():
        embedder = backbones.build_embedder(
            train.x.shape[1:], FLAGS.backbone, FLAGS.embedding_dim, FLAGS.l2_normalize, FLAGS.weights
        )
        entry, loss = losses_lib.build(entry.name, loss_args, num_train_classes)
        optimizer = make_optimizer(FLAGS.optimizer, FLAGS.learning_rate, FLAGS.schedule, total_steps)
        # Keras' XLA train step fails under MirroredStrategy over several CPU
        # devices ("Trying to access resource ... located in device CPU:1").
        jit_compile = FLAGS.jit_compile and not (
            strategy.num_replicas_in_sync > 1 and not tf.config.list_physical_devices("GPU")
        )
        model = build_training_model(entry, loss, embedder, optimizer, jit_compile)
    eval_distance = FLAGS.distance or (
        loss_distance(loss) if not entry.is_head else "cosine"
    )

    model_dir = FLAGS.model_dir
    callbacks = [
        keras.callbacks.CSVLogger(os.path.join(model_dir, HISTORY_FILE), append=True),
        keras.callbacks.BackupAndRestore(os.path.join(model_dir, BACKUP_DIR), double_checkpoint=True),
    ]
    if tensorboard_installed():
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(model_dir, "logs"), write_graph=False))
    else:
        logging.warning("TensorBoard is not installed: no scalar logs (`pip install tensorboard`).")
    # Held-out MAP@R and Precision@1 in the logs (history.csv, TensorBoard) after every epoch.
    callbacks.insert(0, RetrievalEvaluation((test.x, test.y), distance=eval_distance))
    logging.info(
        "Training %s on %s (%s): %d train / %d test samples%s.",
        entry.cls.__name__, data.name, FLAGS.protocol, len(train), len(test),
        " (resuming)" if resuming else "",
    )  # fmt: skip
    train_started = time.time()
    model.fit(
        dataset, epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch, callbacks=callbacks,
        shuffle=False, verbose=1 if sys.stdout.isatty() else 2,
    )  # fmt: skip
    train_seconds = time.time() - train_started
    optimizer_steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))

    model_path = os.path.join(model_dir, MODEL_FILE)
    with outputs.atomic_path(model_path) as tmp:
        embedder.save(tmp)
    test_embeddings = embedder.predict(test.x.astype(np.float32), batch_size=256, verbose=0)
    numbers, roc = evaluation.evaluate(test_embeddings, test.y, eval_distance, seed=FLAGS.seed)
    raw = test.x.reshape(len(test), -1).astype(np.float32)
    baseline, baseline_roc = evaluation.evaluate(raw, test.y, "euclidean", seed=FLAGS.seed)

    history = read_history(os.path.join(model_dir, HISTORY_FILE))
    outputs.plot_training_curves(history, os.path.join(model_dir, outputs.CURVES_FILE))
    outputs.plot_projection(
        test_embeddings, test.y, data.class_names, os.path.join(model_dir, outputs.PROJECTION_FILE),
        FLAGS.projection, FLAGS.seed,
    )  # fmt: skip
    outputs.plot_roc(
        {"model": (*roc, numbers["roc_auc"]), "raw input": (*baseline_roc, baseline["roc_auc"])},
        os.path.join(model_dir, outputs.ROC_FILE),
    )
    neighbors = evaluation.nearest_neighbors(test_embeddings, 5, eval_distance)
    if data.is_image:
        outputs.plot_neighbors(
            test.x, test.y, data.class_names, neighbors,
            os.path.join(model_dir, outputs.NEIGHBORS_FILE), seed=FLAGS.seed,
        )  # fmt: skip
    outputs.write_projector(
        model_dir, test_embeddings, test.y, data.class_names, test.x if data.is_image else None
    )

    report = {
        "dataset": data.name,
        "protocol": FLAGS.protocol,
        "flags": current,
        "loss": {"name": entry.name, "class": entry.cls.__name__, "config": _config(loss)},
        "distance": distances_lib.serialize(eval_distance),
        "batch": {"classes_per_batch": classes_per_batch, "samples_per_class": FLAGS.samples_per_class},
        "split": {
            "train_fraction": train_fraction,
            "train_samples": len(train),
            "train_classes": int(len(np.unique(train.y))),
            "test_samples": len(test),
            "test_classes": int(len(np.unique(test.y))),
        },
        "held_out": {"model": numbers, "raw_input_baseline": baseline},
        "optimizer_steps": optimizer_steps,
        "epochs": FLAGS.epochs,
        "final_loss": history.get("loss", [None])[-1],
        "train_seconds": round(train_seconds, 1),
        "resumed": resuming,
        "model": model_path,
        "plots": [
            name for name in (outputs.CURVES_FILE, outputs.PROJECTION_FILE, outputs.ROC_FILE,
                              outputs.NEIGHBORS_FILE)
            if os.path.exists(os.path.join(model_dir, name))
        ],  # fmt: skip
        "projector": outputs.PROJECTOR_DIR,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    if FLAGS.export:
        report["export"] = exporting.export(
            model_path, os.path.join(model_dir, exporting.EXPORT_DIR), train, test,
            eval_distance, FLAGS.seed,
        )  # fmt: skip
    report["total_seconds"] = round(time.time() - started, 1)
    outputs.write_json(os.path.join(model_dir, outputs.REPORT_FILE), report)
    if "parity_table" in report.get("export", {}):
        print(report["export"]["parity_table"])
    print(outputs.format_table(report))
    print(f"Outputs in {model_dir} ({report['total_seconds']} s).")


def tensorboard_installed():
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def loss_distance(loss):
    """The distance a loss trained with (its `distance` attribute), as a name or instance."""
    return getattr(loss, "distance", None) or "euclidean"


def _config(obj):
    import json

    try:
        config = obj.get_config()
        json.dumps(config)
        return config
    except (TypeError, ValueError, NotImplementedError):
        return None


def run():
    """Entry point; bad input ends with a one-line error, not a traceback."""

    def _main(argv):
        try:
            main(argv)
        except InputError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    app.run(_main)


if __name__ == "__main__":
    run()
