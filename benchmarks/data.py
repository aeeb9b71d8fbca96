"""Throughput of the tfmetric.data samplers against a plain `ds.batch()` pipeline.

Every pipeline reads the same in-memory float32 arrays and yields batches of
`--batch` samples (pairs and triplets: `--batch` pairs / triplets, so 2x / 3x
the inputs). Prints a Markdown table of batches per second and the ratio to
`from_tensor_slices(...).repeat().batch(...)` with the same batch size, and
with as many samples per batch (2x / 3x for pairs / triplets); medians over
`--repeats` rounds, each ratio taken within a round. Measured two ways:

- in the graph: a `tf.function` loop calls `next` on the iterator, as
  `keras.Model.fit` does (the pipeline's own throughput);
- from Python: a `for` loop over the dataset, which adds a Python overhead per
  batch and per output tensor (a batch of 4 tensors costs more than one of 2).

Each also as batches per CPU-second of this process (all its threads), a
measure of the work per batch that other processes on a shared machine disturb
less.

    python benchmarks/data.py [--samples 20000 --dim 784 --classes 100 --batch 64]
"""

import argparse
import itertools
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _results  # noqa: E402  (benchmarks/_results.py, beside this script)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfmetric  # noqa: E402


def _rates(consume, batches, warmup):
    consume(warmup)
    start, cpu_start = time.perf_counter(), time.process_time()
    consume(batches)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return batches / wall, batches / cpu


def in_graph_rates(dataset, batches, warmup=20):
    """Batches per second (wall, CPU) with `next` called inside a `tf.function` loop."""
    iterator = iter(dataset)

    @tf.function
    def consume(count):
        for _ in tf.range(count):
            next(iterator)
        return count

    return _rates(lambda n: consume(tf.constant(n)), batches, warmup)


def python_rates(dataset, batches, warmup=20):
    """Batches per second (wall, CPU) of a Python `for` loop over the dataset."""
    iterator = iter(dataset)

    def consume(count):
        for _ in itertools.islice(iterator, count):
            pass

    return _rates(consume, batches, warmup)


def _machine():
    return f"{_results.cpu_name()}, {os.cpu_count()} CPUs, TensorFlow {tf.__version__}"


def _median_ratio(runs, baseline_runs, column):
    """Median over rounds of `runs[i][column] / baseline_runs[i][column]`."""
    return float(
        np.median([r[column] / b[column] for r, b in zip(runs, baseline_runs, strict=True)])
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=784)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--refresh-every", type=int, default=100)
    parser.add_argument("--pool-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of runs per pipeline")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.samples, args.dim)).astype("float32")
    y = rng.integers(0, args.classes, size=args.samples)
    k = 4
    p = args.batch // k
    embedder = keras.Sequential([keras.Input((args.dim,)), keras.layers.Dense(32)])

    def plain(size):
        return lambda: (
            tf.data.Dataset.from_tensor_slices((x, y))
            .repeat()
            .batch(size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE)
        )

    b = args.batch
    # name -> (samples per batch, dataset factory)
    pipelines = {
        f"plain `ds.batch({b})`": (b, plain(b)),
        f"plain `ds.batch({2 * b})`": (2 * b, plain(2 * b)),
        f"plain `ds.batch({3 * b})`": (3 * b, plain(3 * b)),
        "one constant triplet batch, repeated (the iterator's own cost)": (
            3 * b,
            lambda: (
                tf.data.Dataset.from_tensors(((x[:b],) * 3, y[:b, None].repeat(3, 1)))
                .repeat()
                .prefetch(tf.data.AUTOTUNE)
            ),
        ),
        f"`class_balanced_dataset` (P={p}, K={k})": (
            p * k,
            lambda: tfmetric.data.class_balanced_dataset(x, y, p, k, seed=0),
        ),
        "`pair_dataset`": (2 * b, lambda: tfmetric.data.pair_dataset(x, y, b, seed=0)),
        "`triplet_dataset` (random)": (
            3 * b,
            lambda: tfmetric.data.triplet_dataset(x, y, b, seed=0),
        ),
    }
    mined = {
        f"`triplet_dataset` (hard mining in all {args.samples} samples)": dict(mining="hard"),
        f"`triplet_dataset` (hard mining in a pool of {args.pool_size})": dict(
            mining="hard", pool_size=args.pool_size
        ),
        f"`triplet_dataset` (semi-hard mining in a pool of {args.pool_size})": dict(
            mining="semi-hard", pool_size=args.pool_size
        ),
    }
    for name, kwargs in mined.items():
        pipelines[name] = (
            3 * b,
            lambda kwargs=kwargs: tfmetric.data.triplet_dataset(
                x, y, b, seed=0, embedder=embedder, refresh_every=args.refresh_every, **kwargs
            ),
        )
    baselines = {size: name for name, (size, _) in pipelines.items() if name.startswith("plain")}
    # Rounds of back-to-back runs; ratios are taken within a round (both sides see the
    # same machine state) and the median over rounds is reported.
    measures = {"in the graph": in_graph_rates, "from Python": python_rates}
    runs = {(m, name): [] for m in measures for name in pipelines}
    for _ in range(args.repeats):
        for measure, rates in measures.items():
            for name, (_, make) in pipelines.items():
                runs[measure, name].append(rates(make(), args.batches))
    print(
        f"{args.samples} samples x {args.dim} float32, {args.classes} classes, batch {b}, "
        f"embedder Dense({args.dim} -> 32), refresh every {args.refresh_every} batches; "
        f"{args.repeats} rounds of {args.batches} batches per pipeline after 20 warm-up, "
        f"medians over rounds. Machine: {_machine()}."
    )
    for measure in measures:
        plain_runs = runs[measure, baselines[b]]
        print()
        print(f"Consumed {measure}:")
        print()
        print(
            "| Pipeline | samples per batch | batches/s | vs plain batch of "
            f"{b} | vs plain batch of as many samples | batches per CPU-second | vs plain batch "
            f"of {b} |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, (size, _) in pipelines.items():
            mine = runs[measure, name]
            same = runs[measure, baselines[size]] if size in baselines else None

            same_ratio = f"{_median_ratio(mine, same, 0):.2f}x" if same else "-"
            print(
                f"| {name} | {size} | {np.median([m[0] for m in mine]):,.0f} | "
                f"{_median_ratio(mine, plain_runs, 0):.2f}x | {same_ratio} | "
                f"{np.median([m[1] for m in mine]):,.0f} | {_median_ratio(mine, plain_runs, 1):.2f}x |"
            )


if __name__ == "__main__":
    main()
