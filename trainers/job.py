"""`run(config)`: the main job, from a `trainers.RunConfig`, without absl.

The order matters for `tf.distribute`: the configuration is checked in pure
Python, then the strategy is created (the first TensorFlow op of the run, as
multi-worker and TPU strategies require), then the data are loaded and the
seeds, models, loss and optimizer are made (once each), then the run
directory is prepared, and only then does training start.
"""

import contextlib
import os
import shutil
import tempfile
import time

import numpy as np

from trainers import outputs
from trainers.config import RunConfig


class InputError(ValueError):
    """Bad settings or data, found before training: reported in one line."""


def prepare_model_dir(model_dir, current, overwrite):
    """Creates `model_dir`; refuses one that holds another run unless `overwrite`.

    Returns:
        `True` when a checkpoint of this same run is there to resume from.
    """
    import json

    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ValueError(f"`--model_dir={model_dir}` exists and is not a directory.")
    os.makedirs(model_dir, exist_ok=True)
    flags_path = os.path.join(model_dir, outputs.FLAGS_FILE)
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
        for name in outputs.OWN_OUTPUTS:
            _remove(os.path.join(model_dir, name))
    outputs.write_json(flags_path, current)
    resuming = os.path.isdir(os.path.join(model_dir, outputs.BACKUP_DIR))
    if not resuming:
        for name in (outputs.HISTORY_FILE, outputs.LOGS_DIR):
            _remove(os.path.join(model_dir, name))
    return resuming


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def make_optimizer(name, learning_rate, schedule, total_steps):
    """The Keras optimizer `name` with the learning-rate schedule (names checked by RunConfig)."""
    import keras

    if schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(learning_rate, total_steps, alpha=0.01)
    elif schedule == "exponential":
        rate = keras.optimizers.schedules.ExponentialDecay(learning_rate, max(1, total_steps // 4), 0.5)
    else:
        rate = learning_rate
    return keras.optimizers.get({"class_name": name, "config": {"learning_rate": rate}})


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


def embed(embedder, x, batch_size=256):
    """Embeddings of `x` by direct calls (no `predict`: no collective op under a strategy)."""
    x = np.asarray(x, np.float32)
    parts = [
        np.asarray(embedder(x[start : start + batch_size], training=False))
        for start in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts).astype(np.float32)


@contextlib.contextmanager
def _output_directory(config, cluster):
    """The chief's `--model_dir`, or a temporary directory removed at the end."""
    if cluster is None or cluster.is_chief:
        yield config.model_dir, True
        return
    directory = tempfile.mkdtemp(prefix=f"tfmetric-{cluster.task_type}{cluster.task_index}-")
    try:
        yield directory, False
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run(config):
    """Trains, evaluates and exports as `config` says; returns the report (a dict).

    Args:
        config: A `trainers.RunConfig`.

    Returns:
        The report written to `MODEL_DIR/report.json`.

    Raises:
        InputError: (a `ValueError`) for bad settings or data, before
            anything is trained or written.
        TimeoutError: a multi-worker run whose peers do not answer within
            `config.cluster_timeout` seconds (naming their addresses).
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"`config` must be a trainers.RunConfig; got {type(config).__name__}.")
    from trainers import console

    with console.quiet_output(config.log_level, expected=(InputError,)):
        return _start(config)


def _start(config):
    started = time.time()
    # The strategy first: nothing before it runs a TensorFlow op.
    from trainers import distribution

    try:
        if config.mixed_precision:
            _set_mixed_precision(config.mixed_precision_policy)
        strategy, cluster = distribution.make_strategy(
            config.strategy, config.tpu, config.cluster_timeout
        )
    except ValueError as error:
        raise InputError(str(error)) from None
    with _output_directory(config, cluster) as (out_dir, is_chief):
        report = _run(config, strategy, cluster, out_dir, is_chief, started)
    return report


def _set_mixed_precision(policy):
    import keras
    import tensorflow as tf

    if policy == "auto":
        gpu = tf.config.list_physical_devices("GPU")
        policy = "mixed_float16" if gpu else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)


def _run(config, strategy, cluster, out_dir, is_chief, started):
    import keras
    import tensorflow as tf

    from tfmetric import distances as distances_lib
    from tfmetric.callbacks import RetrievalEvaluation
    from trainers import backbones, console, datasets, evaluation, exporting, pipeline
    from trainers import losses as losses_lib

    # Everything that can fail on the data or a loss value is checked before training.
    try:
        data = datasets.load(
            config.dataset, config.image_size, config.tfrecord_image_key,
            config.tfrecord_label_key, config.tfds_split, config.tfds_data_dir,
        )  # fmt: skip
        train, test = datasets.split(
            data, config.protocol, config.resolved_train_fraction, config.seed
        )
        num_train_classes = len(np.unique(train.y))
        classes_per_batch = config.classes_per_batch or min(10, num_train_classes)
        pipeline.check_batch(train.y, classes_per_batch, config.samples_per_class)
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            entry, loss = losses_lib.build(config.loss, config.loss_arguments(), num_train_classes)
            embedder = backbones.build_embedder(
                train.x.shape[1:], config.backbone, config.embedding_dim, config.l2_normalize,
                config.weights,
            )  # fmt: skip
            optimizer = make_optimizer(
                config.optimizer, config.learning_rate, config.schedule, config.total_steps
            )
            # Keras' XLA train step fails under a strategy with several CPU replicas
            # ("Trying to access resource ... located in device CPU:1").
            jit_compile = config.jit_compile and not (
                strategy.num_replicas_in_sync > 1 and not tf.config.list_physical_devices("GPU")
            )
            model = build_training_model(entry, loss, embedder, optimizer, jit_compile)
        current = config.identity()
        resuming = prepare_model_dir(out_dir, current, config.overwrite or not is_chief)
    except ValueError as error:
        raise InputError(str(error)) from None

    # Training labels are remapped to 0..C-1 (heads need dense class ids).
    _, train_labels = np.unique(train.y, return_inverse=True)
    dataset = pipeline.training_dataset(
        train.x, train_labels.astype(np.int32), classes_per_batch, config.samples_per_class,
        config.seed,
    )  # fmt: skip
    eval_distance = config.distance or (loss_distance(loss) if not entry.is_head else "cosine")

    callbacks = [
        RetrievalEvaluation((test.x, test.y), distance=eval_distance),
        keras.callbacks.CSVLogger(os.path.join(out_dir, outputs.HISTORY_FILE), append=True),
        keras.callbacks.BackupAndRestore(
            os.path.join(out_dir, outputs.BACKUP_DIR), double_checkpoint=True
        ),
    ]
    if tensorboard_installed():
        callbacks.append(
            keras.callbacks.TensorBoard(os.path.join(out_dir, outputs.LOGS_DIR), write_graph=False)
        )
    callbacks.append(console.training_progress(config.total_steps, enabled=is_chief))
    train_started = time.time()
    model.fit(
        dataset, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
        callbacks=callbacks, shuffle=False, verbose=0,
    )  # fmt: skip
    train_seconds = time.time() - train_started
    optimizer_steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))

    progress = console.Progress("evaluate", 6, enabled=is_chief)
    model_path = os.path.join(out_dir, outputs.MODEL_FILE)
    with outputs.atomic_path(model_path) as tmp:
        embedder.save(tmp)
    test_embeddings = embed(embedder, test.x)
    progress.update()
    numbers, roc = evaluation.evaluate(test_embeddings, test.y, eval_distance, seed=config.seed)
    progress.update(map_at_r=numbers["map_at_r"])
    raw = test.x.reshape(len(test), -1).astype(np.float32)
    baseline, baseline_roc = evaluation.evaluate(raw, test.y, "euclidean", seed=config.seed)
    progress.update()

    history = read_history(os.path.join(out_dir, outputs.HISTORY_FILE))
    outputs.plot_training_curves(history, os.path.join(out_dir, outputs.CURVES_FILE))
    progress.update()
    outputs.plot_projection(
        test_embeddings, test.y, data.class_names, os.path.join(out_dir, outputs.PROJECTION_FILE),
        config.projection, config.seed,
    )  # fmt: skip
    outputs.plot_roc(
        {"model": (*roc, numbers["roc_auc"]), "raw input": (*baseline_roc, baseline["roc_auc"])},
        os.path.join(out_dir, outputs.ROC_FILE),
    )
    neighbors = evaluation.nearest_neighbors(test_embeddings, 5, eval_distance)
    if data.is_image:
        outputs.plot_neighbors(
            test.x, test.y, data.class_names, neighbors,
            os.path.join(out_dir, outputs.NEIGHBORS_FILE), seed=config.seed,
        )  # fmt: skip
    progress.update()
    outputs.write_projector(
        out_dir, test_embeddings, test.y, data.class_names, test.x if data.is_image else None
    )
    progress.close()

    report = {
        "dataset": data.name,
        "protocol": config.protocol,
        "flags": current,
        "loss": {"name": entry.name, "class": entry.cls.__name__, "config": _config(loss)},
        "distance": distances_lib.serialize(eval_distance),
        "batch": {
            "classes_per_batch": classes_per_batch,
            "samples_per_class": config.samples_per_class,
            "replicas": int(strategy.num_replicas_in_sync),
        },
        "split": {
            "train_fraction": config.resolved_train_fraction,
            "train_samples": len(train),
            "train_classes": int(len(np.unique(train.y))),
            "test_samples": len(test),
            "test_classes": int(len(np.unique(test.y))),
        },
        "held_out": {"model": numbers, "raw_input_baseline": baseline},
        "optimizer_steps": optimizer_steps,
        "epochs": config.epochs,
        "final_loss": history.get("loss", [None])[-1],
        "train_seconds": round(train_seconds, 1),
        "resumed": resuming,
        "model": model_path,
        "plots": [name for name in outputs.PLOT_FILES if os.path.exists(os.path.join(out_dir, name))],
        "projector": outputs.PROJECTOR_DIR,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    if cluster is not None:
        report["cluster"] = {"workers": cluster.num_workers, "task": cluster.task_type,
                             "index": cluster.task_index}  # fmt: skip
    if config.export and is_chief:
        progress = console.Progress("export", 1)
        report["export"] = exporting.export(
            model_path, os.path.join(out_dir, outputs.EXPORT_DIR), train, test, eval_distance,
            config.seed,
        )  # fmt: skip
        progress.close()
    report["total_seconds"] = round(time.time() - started, 1)
    outputs.write_json(os.path.join(out_dir, outputs.REPORT_FILE), report)
    if is_chief:
        if "parity_table" in report.get("export", {}):
            print(report["export"]["parity_table"])
        print(outputs.format_table(report))
        print(f"Outputs in {out_dir} ({report['total_seconds']} s).")
    return report
