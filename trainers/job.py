"""`run(config)`: the main job, from a `trainers.RunConfig`, without absl.

The order matters for `tf.distribute`: the configuration is checked in pure
Python, then the strategy is created (the first TensorFlow op of the run, as
multi-worker and TPU strategies require), then the data are loaded and the
seeds, models, loss and optimizer are made (once each), then the run
directory is prepared, and only then does training start.
"""

import contextlib
import json
import os
import shutil
import tempfile
import time

import numpy as np

from trainers import outputs
from trainers.config import RunConfig
from trainers.errors import ExportFailed, InputError, TrainingDiverged, WorkerLost

__all__ = ["ExportFailed", "InputError", "TrainingDiverged", "WorkerLost", "run"]


def prepare_model_dir(model_dir, current, overwrite):
    """Creates `model_dir`; refuses one that holds another run unless `overwrite`.

    Returns:
        `True` when a checkpoint of this same run is there to resume from.
    """
    import json

    from tfmetric._src import files

    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ValueError(f"`--model_dir={model_dir}` exists and is not a directory.")
    problem = files.directory_problem(model_dir)
    if problem is not None:
        raise ValueError(f"`--model_dir={model_dir}` cannot be created: {problem}.")
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"`--model_dir={model_dir}` cannot be created: {error.strerror or error}."
        ) from None
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


def build_training_model(kind, entry, loss, embedder, optimizer, jit_compile, distance=None,
                         pair_scorer="distance"):  # fmt: skip
    """Compiles the model that trains, by kind.

    `embedding`: the embedder with the in-batch loss; `proxy`: a `ProxyModel`
    with the head; `siamese`: a `SiameseModel` (distance, or a `WeightedL1`
    pair scorer) with its pair loss; `triplet`: a `TripletModel` with
    `TripletMarginLoss`.
    """
    from tfmetric import layers, models

    if kind == "proxy":
        model = models.ProxyModel(embedder, loss)
        model.compile(optimizer=optimizer, jit_compile=jit_compile)
        return model
    if kind == "siamese":
        scorer = layers.WeightedL1(name="weighted_l1") if pair_scorer == "weighted_l1" else None
        model = models.SiameseModel(embedder, distance=distance or "euclidean", scorer=scorer,
                                    name="siamese")  # fmt: skip
    elif kind == "triplet":
        model = models.TripletModel(embedder, distance=distance or "euclidean", name="triplet")
    else:
        model = embedder
    model.compile(optimizer=optimizer, loss=loss, jit_compile=jit_compile)
    return model


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
    import glob
    import hashlib

    run_id = hashlib.sha1(os.path.abspath(config.model_dir).encode()).hexdigest()[:10]
    prefix = f"tfmetric-{cluster.task_type}{cluster.task_index}-{run_id}-"
    # A killed earlier start of this same worker of this run could not remove its directory.
    for stale in glob.glob(os.path.join(tempfile.gettempdir(), prefix + "*")):
        shutil.rmtree(stale, ignore_errors=True)
    directory = tempfile.mkdtemp(prefix=prefix)
    try:
        # Resume where the chief's checkpoint says (every worker restores the same epoch):
        # the run directory must be readable by every worker (shared storage).
        chief_backup = os.path.join(config.model_dir, outputs.BACKUP_DIR)
        if os.path.isdir(chief_backup):
            shutil.copytree(chief_backup, os.path.join(directory, outputs.BACKUP_DIR))
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
        ExportFailed: if the export stage fails; `model.keras` and
            `report.json` (the evaluation) are written before it and kept.
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"`config` must be a trainers.RunConfig; got {type(config).__name__}.")
    from trainers import console

    with console.quiet_output(config.log_level,
                              expected=(InputError, WorkerLost, TrainingDiverged,
                                        ExportFailed)):  # fmt: skip
        return _start(config)


def _start(config):
    started = time.time()
    # The strategy first: nothing before it runs a TensorFlow op.
    from trainers import console, distribution

    try:
        if config.mixed_precision:
            _set_mixed_precision(config.mixed_precision_policy)
        strategy, cluster = distribution.make_strategy(
            config.strategy, config.tpu, config.cluster_timeout, console.visible_stderr()
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


def _training_distance(config, kind, loss):
    """The distance the model trains with (and is evaluated with, unless it has a pair scorer)."""
    if kind == "proxy":
        return config.distance or "cosine"
    if kind == "siamese":
        return config.distance or "euclidean"
    return config.distance or loss_distance(loss)


def _scores_of_pairs(model, x, i, j, batch_size=512):
    """The Siamese model's own score of each pair `(x[i], x[j])` (distance or scorer), by direct calls."""
    x = np.asarray(x, np.float32)
    parts = [
        np.asarray(model([x[i[s : s + batch_size]], x[j[s : s + batch_size]]], training=False))
        for s in range(0, len(i), batch_size)
    ]
    return np.concatenate(parts).reshape(-1)


def _run(config, strategy, cluster, out_dir, is_chief, started):
    import keras
    import tensorflow as tf

    from tfmetric import distances as distances_lib
    from tfmetric import metrics
    from trainers import backbones, console, evaluation, exporting, pipeline, protocols
    from trainers import losses as losses_lib

    kind = config.kind
    # Everything that can fail on the data or a loss value is checked before training.
    try:
        with strategy.scope():  # the loss's argument values, before the data are read
            losses_lib.build(config.loss_entry(), config.loss_arguments(), 2)
        data, train, test, evaluate_protocol = protocols.load_and_split(config)
        num_train_classes = len(np.unique(train.y))
        classes_per_batch = config.classes_per_batch or min(10, num_train_classes)
        if kind in ("embedding", "proxy") and not config.views:
            pipeline.check_batch(train.y, classes_per_batch, config.samples_per_class)
        # Training labels are remapped to 0..C-1 (heads need dense class ids).
        _, train_labels = np.unique(train.y, return_inverse=True)
        train_labels = train_labels.astype(np.int32)
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            entry, loss = losses_lib.build(
                config.loss_entry(), config.loss_arguments(), num_train_classes
            )
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
            distance = _training_distance(config, kind, loss)
            model = build_training_model(
                kind, entry, loss, embedder, optimizer, jit_compile, distance, config.pair_scorer
            )
        schedule = _curriculum(config)
        dataset = pipeline.training_data(
            kind, train.x, train_labels, config, classes_per_batch, embedder=embedder,
            distance=distance, schedule=schedule,
        )  # fmt: skip
        current = config.identity()
        if is_chief:
            resuming = prepare_model_dir(out_dir, current, config.overwrite)
        else:
            resuming = os.path.isdir(os.path.join(out_dir, outputs.BACKUP_DIR))
    except ValueError as error:
        raise InputError(str(error)) from None

    scorer = model.scorer if kind == "siamese" else None
    # A learned-distance scorer is the distance of the trained model (its weights as they are now).
    eval_distance = distances_lib.get(scorer) if scorer is not None else distance

    divergence = DivergenceStop()
    callbacks = [
        divergence,
        keras.callbacks.CSVLogger(os.path.join(out_dir, outputs.HISTORY_FILE), append=True),
        keras.callbacks.BackupAndRestore(
            os.path.join(out_dir, outputs.BACKUP_DIR), double_checkpoint=True
        ),
    ]
    if is_chief:  # held-out numbers in the logs; the other workers only train
        callbacks.insert(0, HeldOutRetrieval(embedder, test.x, test.y, eval_distance, divergence))
    if schedule is not None:
        callbacks.append(schedule)
    if tensorboard_installed():
        callbacks.append(
            keras.callbacks.TensorBoard(os.path.join(out_dir, outputs.LOGS_DIR), write_graph=False)
        )
    callbacks.append(console.training_progress(config.total_steps, enabled=is_chief))
    train_started = time.time()
    try:
        model.fit(
            dataset, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
            callbacks=callbacks, shuffle=False, verbose=0,
        )  # fmt: skip
    except (tf.errors.UnavailableError, tf.errors.FailedPreconditionError, tf.errors.AbortedError,
            tf.errors.CancelledError, tf.errors.DeadlineExceededError) as error:  # fmt: skip
        if cluster is None:
            raise
        raise WorkerLost(
            f"Worker {cluster.task_type}:{cluster.task_index} lost contact with the cluster "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). Restart every worker "
            "with the same flags: training resumes from the last epoch's checkpoint in "
            f"{os.path.join(config.model_dir, outputs.BACKUP_DIR)}."
        ) from None
    if divergence.diverged is not None:
        raise TrainingDiverged(divergence.message(config))
    train_seconds = time.time() - train_started
    optimizer_steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if not is_chief:
        # The chief evaluates, writes and exports; the others are done (their directory goes).
        return {"task": cluster.task_type, "index": cluster.task_index, "resumed": resuming,
                "optimizer_steps": optimizer_steps, "train_seconds": round(train_seconds, 1)}  # fmt: skip

    progress = console.Progress("evaluate", 8, enabled=is_chief)
    model_path = os.path.join(out_dir, outputs.MODEL_FILE)
    exporting.save_model(embedder, model_path, data.is_image)
    pair_model_path = None
    if kind == "siamese":
        pair_model_path = os.path.join(out_dir, outputs.PAIR_MODEL_FILE)
        exporting.save_model(model, pair_model_path, data.is_image)
    test_embeddings = embed(embedder, test.x)
    progress.update()
    numbers, roc = evaluation.evaluate(test_embeddings, test.y, eval_distance, seed=config.seed)
    progress.update(map_at_r=numbers["map_at_r"])
    raw = test.x.reshape(len(test), -1).astype(np.float32)
    baseline, baseline_roc = evaluation.evaluate(raw, test.y, "euclidean", seed=config.seed)
    progress.update()

    # Pair verification on held-out pairs (the threshold's accuracy cross-validated on them).
    i, j, same = evaluation.sample_pairs(test.y, seed=config.seed)
    eval_view = distances_lib.get(eval_distance)
    if kind == "siamese":
        scores = _scores_of_pairs(model, test.x, i, j)
    else:
        scores = metrics.paired_distances(test_embeddings[i], test_embeddings[j], eval_view)
    # Verified on "larger is closer" scores; the threshold is reported in the scores' own terms.
    verification = evaluation.pair_verification(
        eval_view.to_closeness(np.asarray(scores, np.float64)), same, True, seed=config.seed
    )
    verification["threshold"] = float(eval_view.from_closeness(verification["threshold"]))
    numbers.update(verification)
    raw_scores = metrics.paired_distances(raw[i], raw[j])
    baseline.update(evaluation.pair_verification(raw_scores, same, False, seed=config.seed))
    progress.update(pair_roc_auc=numbers["pair_roc_auc"])
    numbers.update(evaluation.few_shot(test_embeddings, test.y, eval_distance, seed=config.seed))
    baseline.update(evaluation.few_shot(raw, test.y, "euclidean", seed=config.seed))
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
        "model_kind": kind,
        "flags": current,
        "loss": {"name": entry.name, "class": entry.cls.__name__, "config": _config(loss)},
        "distance": _config_of_distance(eval_distance),
        "batch": _batch_report(config, kind, classes_per_batch, strategy),
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
    if pair_model_path is not None:
        report["pair_model"] = pair_model_path
    if schedule is not None:
        report["curriculum"] = {str(k): v for k, v in config.curriculum_schedule().items()}
    report["class_names"] = list(data.class_names)
    if evaluate_protocol is not None:
        report[config.protocol] = evaluate_protocol(
            lambda x: embed(embedder, x), test_embeddings, eval_distance
        )
    if cluster is not None:
        report["cluster"] = {"workers": cluster.num_workers, "task": cluster.task_type,
                             "index": cluster.task_index}  # fmt: skip
    report_path = os.path.join(out_dir, outputs.REPORT_FILE)
    if config.export and is_chief:
        # The evaluation is on disk before the export starts: an export failure keeps it.
        report["total_seconds"] = round(time.time() - started, 1)
        outputs.write_report(report_path, report)
        progress = console.Progress("export", 1)
        export_dir = os.path.join(out_dir, outputs.EXPORT_DIR)
        try:
            # A Siamese network is exported whole (its distance or pair scorer with it).
            report["export"] = exporting.export(
                pair_model_path or model_path, export_dir, train, test,
                None if kind == "siamese" else distance, config.seed, config.tflite_variant_list(),
            )  # fmt: skip
        except Exception as error:
            reason = (str(error).strip().splitlines() or [""])[0][:300]
            raise ExportFailed(
                f"the export to {export_dir} failed ({type(error).__name__}: {reason}); the model "
                f"({pair_model_path or model_path}) and the evaluation ({report_path}) were kept: "
                "export it again with `python -m export --model=... --output=...`, or rerun "
                "with --noexport."
            ) from error
        progress.close()
    report["total_seconds"] = round(time.time() - started, 1)
    outputs.write_report(report_path, report)
    if is_chief:
        if "parity_table" in report.get("export", {}):
            print(report["export"]["parity_table"])
        print(outputs.format_table(report))
        if evaluate_protocol is not None:
            print(f"{config.protocol} protocol:", json.dumps(report[config.protocol]))
        print(f"Outputs in {out_dir} ({report['total_seconds']} s).")
    return report


def _config_of_distance(distance):
    from tfmetric import distances as distances_lib

    try:
        return distances_lib.serialize(distance)
    except (TypeError, ValueError):
        return str(distance)


def _batch_report(config, kind, classes_per_batch, strategy):
    replicas = int(strategy.num_replicas_in_sync)
    if kind in ("siamese", "triplet"):
        unit = "pairs" if kind == "siamese" else "triplets"
        return {unit: config.global_batch_size, "replicas": replicas}
    report = {"classes_per_batch": classes_per_batch, "samples_per_class": config.samples_per_class,
              "replicas": replicas}  # fmt: skip
    if config.views:
        report["views"] = config.views
    return report


def _curriculum(config):
    """The `MiningSchedule` of `--curriculum` (in-batch loss or offline triplet mining), or None."""
    schedule = config.curriculum_schedule()
    if schedule is None:
        return None
    from tfmetric.callbacks import MiningSchedule

    return MiningSchedule(mining=schedule)


def _held_out_retrieval_class():
    import keras

    from tfmetric import metrics

    class HeldOutRetrieval(keras.callbacks.Callback):
        """`val_map_at_r` and `val_precision_at_1` of the held-out split after each epoch.

        Embeds with the shared embedder by direct calls, so it works for every
        model kind and under any strategy.
        """

        def __init__(self, embedder, x, y, distance, divergence=None):
            super().__init__()
            self.embedder, self.x, self.y, self.distance = embedder, x, y, distance
            self.divergence = divergence

        def on_epoch_end(self, epoch, logs=None):
            embeddings = embed(self.embedder, self.x)
            if not np.all(np.isfinite(embeddings)):
                if self.divergence is not None:  # it stops the run and says so
                    self.divergence.record(epoch, None, "the held-out embeddings became NaN/Inf")
                return
            scores = metrics.evaluate_retrieval(
                embeddings, self.y, distance=self.distance,
                metrics=("map_at_r", "precision_at_1"),
            )  # fmt: skip
            if logs is not None:
                logs.update({f"val_{k}": float(v) for k, v in scores.items()})

    return HeldOutRetrieval


def HeldOutRetrieval(embedder, x, y, distance, divergence=None):  # noqa: N802 (a factory)
    return _held_out_retrieval_class()(embedder, x, y, distance, divergence)


def _divergence_stop_class():
    import keras

    class DivergenceStop(keras.callbacks.TerminateOnNaN):
        """Keras' `TerminateOnNaN`, recording where the loss became NaN or infinite.

        Training stops gracefully (`model.stop_training`) at the first batch
        whose loss is not finite; `message(config)` then says so, naming the
        learning rate and the optimizer, and the run ends with
        `TrainingDiverged` instead of evaluating NaN embeddings.
        """

        def __init__(self):
            super().__init__()
            self.diverged = None
            self._epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch

        def on_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not np.isfinite(loss):
                self.record(self._epoch, batch, f"the loss became {float(loss)}")

        def record(self, epoch, batch, what):
            """Stops training: `what` happened at `epoch` (and `batch`, or None)."""
            if self.diverged is None:
                self.diverged = (epoch, batch, what)
            self.model.stop_training = True

        def message(self, config):
            epoch, batch, what = self.diverged
            where = f"epoch {epoch + 1}" + (f", batch {batch + 1}" if batch is not None else "")
            return (
                f"training diverged: {what} at {where} "
                f"(--learning_rate={config.learning_rate:g}, --optimizer={config.optimizer}, "
                f"--schedule={config.schedule}). Lower --learning_rate (e.g. 10x smaller) and run "
                "again with --overwrite; no model or report was written."
            )

    return DivergenceStop


def DivergenceStop():  # noqa: N802 (a callback factory)
    return _divergence_stop_class()()
