r"""Trains, evaluates and exports a metric-learning embedder.

    python -m trainers.train                       # digits, small CNN, triplet loss
    python -m trainers.train --dataset=tfds:cars196 --protocol=classes \
        --backbone=resnet50 --weights=imagenet --image_size=224 --loss=multi_similarity
    python -m trainers.train --loss=arcface --scale=30 --margin=0.3
    python -m trainers.train --model_kind=siamese --pair_scorer=weighted_l1
    python -m trainers.train --model_kind=triplet --curriculum=0:easy,3:semi-hard,6:hard

The flags make a `trainers.RunConfig` (checked before any TensorFlow op), then
`trainers.run(config)` runs it: create the `--strategy`; load the data and
split it by `--protocol`; build the embedder (`--backbone`, `--embedding_dim`,
`--l2_normalize`), the model of `--model_kind` (embedding, proxy, siamese,
triplet) and its loss (`--loss` with its arguments); train on its batches
(class-balanced `--classes_per_batch` x `--samples_per_class`, or
`--batch_size` pairs / triplets), with a checkpoint every epoch in
`--model_dir/backup` (a killed run restarts where it stopped when run again
with the same flags); evaluate on the held-out split beside the raw-input
baseline; write everything to `--model_dir`:

- `flags.json` (the run's settings; another run's are refused unless
  `--overwrite`), `history.csv`, `logs/` (TensorBoard scalars and the embedding
  projector: `logs/projector`);
- `report.json` and the printed table: held-out Precision@1, MAP@R,
  R-precision, verification ROC AUC and EER, pair verification on held-out
  pairs (ROC AUC, EER, TAR@FAR=1e-3, calibrated threshold and accuracy), 5-way
  1-shot and 5-shot accuracy, model vs raw input;
- `training_curves.png`, `embeddings_2d.png`, `roc_curve.png`,
  `nearest_neighbors.png`;
- `model.keras` (the embedder; `pair_model.keras` too for Siamese networks)
  and, unless `--noexport`, `export/` (SavedModel, TFLite, parity report).

Output is one progress line per phase and the tables (`--log_level=info` or
`debug` shows TensorFlow's logs). `--strategy=multi_worker`: see
docs/distributed.md.
"""

import os
import sys

from absl import app, flags

from trainers import datasets
from trainers.config import (
    KINDS,
    LOG_LEVELS,
    MIXED_PRECISION_POLICIES,
    PAIR_SCORERS,
    PROJECTIONS,
    SCHEDULES,
    STRATEGIES,
    RunConfig,
    defaults,
)

FLAGS = flags.FLAGS
_D = defaults()

# Data.
flags.DEFINE_string(
    "dataset", _D["dataset"], "digits | directory:PATH | tfrecord:GLOB | npz:PATH | tfds:NAME."
)
flags.DEFINE_enum("protocol", _D["protocol"], list(datasets.PROTOCOLS),
                  "samples: split each class (closed set); classes: hold out unseen classes (open set); "
                  "pairs: LFW pair verification (--pairs_file); reid: Market-1501 (--dataset=reid:ROOT).")
flags.DEFINE_string("pairs_file", _D["pairs_file"],
                    "pairs: LFW-style pairs file (identities named there are held out).")
flags.DEFINE_float("train_fraction", _D["train_fraction"],
                   "Fraction of each class's samples (samples; default 0.7) or of the classes "
                   "(classes; default 0.5, as for CUB-200 and Cars-196) used for training.")
flags.DEFINE_integer("image_size", _D["image_size"],
                     "Side images are resized to when their sizes differ (not digits).")
flags.DEFINE_string("tfrecord_image_key", _D["tfrecord_image_key"],
                    "tfrecord: feature holding the encoded image.")
flags.DEFINE_string("tfrecord_label_key", _D["tfrecord_label_key"],
                    "tfrecord: int64 feature holding the class.")
flags.DEFINE_string("tfds_split", _D["tfds_split"], "tfds: split(s) to pool before `--protocol` splits them.")
flags.DEFINE_string("tfds_data_dir", _D["tfds_data_dir"], "tfds: data directory (default: TFDS's).")
# Model.
flags.DEFINE_string("backbone", _D["backbone"],
                    "small_cnn | mlp | a keras.applications name (resnet50, ...).")
flags.DEFINE_string("weights", _D["weights"], "Backbone weights for keras.applications: imagenet or a file.")
flags.DEFINE_integer("embedding_dim", _D["embedding_dim"], "Embedding size.")
flags.DEFINE_boolean("l2_normalize", _D["l2_normalize"], "End the embedder with L2 normalisation.")
flags.DEFINE_enum("model_kind", _D["model_kind"], list(KINDS),
                  "embedding: in-batch loss on PxK batches; proxy: a proxy head (ArcFace...); "
                  "siamese: SiameseModel on labelled pairs; triplet: TripletModel on explicit "
                  "triplets. Default: proxy for a head --loss, else embedding.")
flags.DEFINE_enum("pair_scorer", _D["pair_scorer"], list(PAIR_SCORERS),
                  "siamese: what scores a pair: distance (the embedding distance + pair "
                  "contrastive loss) or weighted_l1 (Koch et al.'s learned scorer + binary "
                  "cross-entropy).")
flags.DEFINE_alias("siamese_head", "pair_scorer")  # its former name
# Loss.
flags.DEFINE_string("loss", _D["loss"],
                    "A tfmetric loss or head by name (an unknown name lists them). Default: "
                    "triplet (embedding), arc_face (proxy), the twin network's own loss "
                    "(siamese: pair_contrastive or binary_crossentropy; triplet: triplet_margin).")
flags.DEFINE_float("margin", _D["margin"], "Loss/head `margin` (default: the class's).")
flags.DEFINE_string("mining", _D["mining"],
                    "Loss `mining` (semi-hard | hard | all); for --model_kind=triplet the offline "
                    "mining of the triplets (easy | semi-hard | hard; none: random triplets).")
flags.DEFINE_float("temperature", _D["temperature"], "Loss/head `temperature`.")
flags.DEFINE_float("scale", _D["scale"], "Head `scale` (ArcFace, CosFace...).")
flags.DEFINE_string("distance", _D["distance"],
                    "Loss `distance` (euclidean, cosine, ...); also used to evaluate.")
flags.DEFINE_multi_string("loss_arg", [], "Any other loss argument as name=value (repeatable).")
# Optimisation.
flags.DEFINE_integer("classes_per_batch", _D["classes_per_batch"],
                     "P: classes per batch (default: min(10, training classes)).")
flags.DEFINE_integer("samples_per_class", _D["samples_per_class"], "K: samples per class in a batch.")
flags.DEFINE_integer("batch_size", _D["batch_size"],
                     "siamese / triplet: pairs or triplets per batch (global, across replicas; "
                     "default: classes_per_batch x samples_per_class).")
flags.DEFINE_float("positive_fraction", _D["positive_fraction"],
                   "siamese: fraction of same-class pairs in a batch.")
flags.DEFINE_integer("refresh_every", _D["refresh_every"],
                     "triplet with --mining/--curriculum: batches between offline-mining refreshes "
                     "(default: --steps_per_epoch, once per epoch).")
flags.DEFINE_integer("mining_pool", _D["mining_pool"],
                     "triplet with --mining/--curriculum: samples drawn at each refresh to mine in "
                     "(default: all training samples).")
flags.DEFINE_string("curriculum", _D["curriculum"],
                    "Mining mode by epoch, e.g. 0:easy,3:semi-hard,6:hard (triplet: offline "
                    "mining; embedding: the loss's in-batch mining).")
flags.DEFINE_integer("views", _D["views"],
                     "embedding: >= 2 trains on batches of V augmented views of P*K/V samples "
                     "labelled by sample, no class labels (e.g. --loss=ntxent --views=2); "
                     "0: labelled P x K batches.")
flags.DEFINE_string("optimizer", _D["optimizer"],
                    "A Keras optimizer name (adam, adamw, sgd, rmsprop, lion...).")
flags.DEFINE_float("learning_rate", _D["learning_rate"], "Peak learning rate.")
flags.DEFINE_enum("schedule", _D["schedule"], list(SCHEDULES), "Learning-rate schedule.")
flags.DEFINE_integer("epochs", _D["epochs"], "Epochs.")
flags.DEFINE_integer("steps_per_epoch", _D["steps_per_epoch"], "Batches per epoch.")
flags.DEFINE_boolean("jit_compile", _D["jit_compile"], "Compile the train step with XLA.")
flags.DEFINE_boolean("mixed_precision", _D["mixed_precision"],
                     "mixed_float16 on GPU, mixed_bfloat16 elsewhere.")
flags.DEFINE_enum("mixed_precision_policy", _D["mixed_precision_policy"],
                  list(MIXED_PRECISION_POLICIES),
                  "Policy used by --mixed_precision (auto: the one that suits the device).")
flags.DEFINE_enum("strategy", _D["strategy"], list(STRATEGIES),
                  "tf.distribute strategy (multi_worker: see docs/distributed.md).")
flags.DEFINE_string("tpu", _D["tpu"], "TPU address for --strategy=tpu (default: the local TPU).")
flags.DEFINE_float("cluster_timeout", _D["cluster_timeout"],
                   "multi_worker: seconds to wait for the other workers at start-up.")
flags.DEFINE_integer("seed", _D["seed"], "Random seed (data split, batches, weights).")
# Outputs.
flags.DEFINE_string("model_dir", _D["model_dir"], "Where checkpoints, logs, report and model go.")
flags.DEFINE_enum("projection", _D["projection"], list(PROJECTIONS),
                  "2-D projection of the held-out embeddings plot (t-SNE is slower).")
flags.DEFINE_boolean("overwrite", _D["overwrite"],
                     "Replace the outputs of a different run in --model_dir.")
flags.DEFINE_boolean("export", _D["export"], "Export (SavedModel + TFLite + parity); --noexport skips it.")
flags.DEFINE_string("tflite_variants", _D["tflite_variants"],
                    "TFLite variants exported beside the SavedModel (comma-separated; empty: none).")
flags.DEFINE_enum("log_level", _D["log_level"], list(LOG_LEVELS),
                  "quiet: progress bars and the final tables; info: also TensorFlow's and absl's "
                  "logs; debug: everything.")


def main(argv):
    """Builds the run configuration from the flags and runs it."""
    del argv
    from trainers import console, errors

    # Before anything imports TensorFlow: its native log level is read at import, and
    # what it prints at import goes to the hidden stream.
    console.prepare_environment(FLAGS.log_level)
    expected = (errors.InputError, errors.WorkerLost, errors.TrainingDiverged,
                errors.ExportFailed)  # fmt: skip
    with console.quiet_output(FLAGS.log_level, expected=expected):
        try:
            config = RunConfig.from_flags(FLAGS)
        except (ValueError, TypeError) as error:
            raise errors.InputError(str(error)) from None
        from trainers import job

        return job.run(config)


def run():
    """Entry point; bad input ends with a one-line error, not a traceback."""
    from trainers import errors

    def _main(argv):
        try:
            main(argv)
        except errors.InputError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except errors.TrainingDiverged as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(4)
        except errors.ExportFailed as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(5)
        except errors.WorkerLost as error:
            print(f"error: {error}", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            # TensorFlow's collective threads may still wait on the lost peer: do not join them.
            os._exit(3)

    app.run(_main)


if __name__ == "__main__":
    run()
