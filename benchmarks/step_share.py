"""The loss's share of a training step, for the trainer's default model and a ResNet-50.

For each model, one Keras training step (`model.train_on_batch`, compiled with
`jit_compile=True`, Adam, the trainer's default loss: semi-hard
`TripletLoss`) is timed against the forward+backward of each in-batch loss
alone (XLA, on the model's own embeddings of the same batch), in alternating
rounds so that both see the same load on a shared machine; medians of wall and
process CPU time. The share is the loss's time over the step's.

Models (B = 256, P×K batches with K = 8, the trainer's default):

- the trainer's default: `trainers.backbones.build_embedder` with the small
  CNN on scikit-learn's 8×8×1 digits, 64-d L2-normalised embeddings;
- `keras.applications.ResNet50(weights=None)` through the same builder
  (`--backbone=resnet50`), on `--resnet_size`² RGB inputs (64² by default,
  to stay feasible on a CPU), 64-d embeddings.

    python benchmarks/step_share.py
    python benchmarks/step_share.py --resnet_size 32 --rounds 3 --losses Triplet
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(name, input_shape, backbone, batch, samples_per_class, rounds, loss_names):
    """Rows `(model, loss, step ms, loss ms, share, step CPU ms, loss CPU ms, CPU share)`."""
    import keras
    import losses as loss_bench
    import numpy as np
    import tensorflow as tf

    from trainers import backbones, kinds
    from trainers import losses as trainer_losses

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(batch, *input_shape)).astype("float32")
    y = (np.arange(batch) // samples_per_class).astype("int32")
    model = backbones.build_embedder(input_shape, backbone, embedding_dim=64)
    _, default_loss = trainer_losses.build(kinds.DEFAULT_LOSS["embedding"], {})
    model.compile(optimizer="adam", loss=default_loss, jit_compile=True)

    def train():
        float(model.train_on_batch(x, y))

    for _ in range(2):
        train()
    embeddings = tf.constant(model.predict(x, batch_size=batch, verbose=0))
    labels = tf.constant(y)
    candidates = loss_bench._losses()
    rows = []
    for loss_name in loss_names:
        step = loss_bench.compiled_step(candidates[loss_name])

        def run(step=step):
            step(embeddings, labels)[1].numpy()

        run()
        run()
        walls, cpus = [], []
        for r in range(rounds):
            order = (train, run) if r % 2 == 0 else (run, train)
            times = {fn: _timed(fn) for fn in order}
            walls.append((times[train][0], times[run][0]))
            cpus.append((times[train][1], times[run][1]))
        walls, cpus = np.asarray(walls), np.asarray(cpus)
        rows.append(
            (
                name,
                loss_name,
                1000 * np.median(walls[:, 0]),
                1000 * np.median(walls[:, 1]),
                100 * np.median(walls[:, 1] / walls[:, 0]),
                1000 * np.median(cpus[:, 0]),
                1000 * np.median(cpus[:, 1]),
                100 * np.median(cpus[:, 1] / cpus[:, 0]),
            )
        )
        print("| {} | {} | {:.1f} | {:.2f} | {:.2f}% | {:.1f} | {:.2f} | {:.2f}% |".format(*rows[-1]),
              flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--samples_per_class", type=int, default=8)
    parser.add_argument("--resnet_size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--losses", default="", help="comma-separated substrings selecting losses")
    parser.add_argument("--models", default="default,resnet50")
    args = parser.parse_args()

    import losses as loss_bench

    names = [n for n in loss_bench._losses() if n != loss_bench.FLOOR]
    if args.losses:
        names = [n for n in names if any(w in n for w in args.losses.split(","))]
    models = {
        "default": ("trainer default: small CNN, 8×8×1 digits", (8, 8, 1), "small_cnn"),
        "resnet50": (
            f"ResNet50(weights=None), {args.resnet_size}×{args.resnet_size}×3",
            (args.resnet_size, args.resnet_size, 3),
            "resnet50",
        ),
    }
    print(f"Machine: {loss_bench._machine()}")
    print(
        f"B = {args.batch} (P×K, K = {args.samples_per_class}), 64-d embeddings, Adam, train step with "
        f"the trainer's default loss (semi-hard TripletLoss); {args.rounds} alternating rounds, "
        f"medians; load average at start {loss_bench._load()}"
    )
    print()
    print("| model | loss | train step ms | loss fwd+bwd ms | share | step CPU ms | loss CPU ms "
          "| share (CPU) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for key in args.models.split(","):
        label, shape, backbone = models[key]
        measure(label, shape, backbone, args.batch, args.samples_per_class, args.rounds, names)
    print()
    print(f"Load average at the end: {loss_bench._load()}")


if __name__ == "__main__":
    main()
