"""Throughput of the tfmetric.data samplers against a plain `ds.batch()` pipeline.

Every pipeline reads the same in-memory float32 arrays and yields batches of
`--batch` samples (pairs and triplets: `--batch` pairs / triplets, so 2x / 3x
the inputs). Prints a Markdown table of batches per second and the ratio to
`from_tensor_slices(...).repeat().batch(...)`, best of `--repeats` interleaved
runs; also batches per CPU-second of this process (all its threads), a measure
of the work per batch that other processes on a shared machine disturb less.

    python benchmarks/data.py [--samples 20000 --dim 784 --classes 100 --batch 64]
"""

import argparse
import itertools
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfmetric  # noqa: E402


def batches_per_second(dataset, batches, warmup=20):
    iterator = iter(dataset)
    for _ in itertools.islice(iterator, warmup):
        pass
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in itertools.islice(iterator, batches):
        pass
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return batches / wall, batches / cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=784)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--refresh-every", type=int, default=100)
    parser.add_argument("--pool-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs per pipeline")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.samples, args.dim)).astype("float32")
    y = rng.integers(0, args.classes, size=args.samples)
    k = 4
    p = args.batch // k
    embedder = keras.Sequential([keras.Input((args.dim,)), keras.layers.Dense(32)])

    pipelines = {
        "plain `ds.batch()`": lambda: (
            tf.data.Dataset.from_tensor_slices((x, y))
            .repeat()
            .batch(args.batch, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE)
        ),
        f"`class_balanced_dataset` (P={p}, K={k})": lambda: tfmetric.data.class_balanced_dataset(
            x, y, p, k, seed=0
        ),
        "`pair_dataset`": lambda: tfmetric.data.pair_dataset(x, y, args.batch, seed=0),
        "`triplet_dataset` (random)": lambda: tfmetric.data.triplet_dataset(
            x, y, args.batch, seed=0
        ),
        f"`triplet_dataset` (hard mining, refresh every {args.refresh_every})": lambda: (
            tfmetric.data.triplet_dataset(
                x,
                y,
                args.batch,
                seed=0,
                embedder=embedder,
                mining="hard",
                refresh_every=args.refresh_every,
            )
        ),
        f"`triplet_dataset` (hard mining in a pool of {args.pool_size})": lambda: (
            tfmetric.data.triplet_dataset(
                x,
                y,
                args.batch,
                seed=0,
                embedder=embedder,
                mining="hard",
                refresh_every=args.refresh_every,
                pool_size=args.pool_size,
            )
        ),
    }
    # Best of several interleaved runs: the rate least disturbed by other processes.
    results = {name: (0.0, 0.0) for name in pipelines}
    for _ in range(args.repeats):
        for name, make in pipelines.items():
            wall, cpu = batches_per_second(make(), args.batches)
            results[name] = (max(results[name][0], wall), max(results[name][1], cpu))
    baseline, cpu_baseline = results["plain `ds.batch()`"]
    print(
        f"{args.samples} samples x {args.dim} float32, {args.classes} classes, batch {args.batch}, "
        f"best of {args.repeats} runs of {args.batches} batches after 20 warm-up; "
        f"TensorFlow {tf.__version__}, "
        f"{os.cpu_count()} CPUs ({platform.machine()})."
    )
    print()
    print("| Pipeline | batches/s | vs plain | batches per CPU-second | vs plain |")
    print("|---|---:|---:|---:|---:|")
    for name, (rate, cpu_rate) in results.items():
        print(
            f"| {name} | {rate:,.0f} | {rate / baseline:.2f}x | {cpu_rate:,.0f} | "
            f"{cpu_rate / cpu_baseline:.2f}x |"
        )


if __name__ == "__main__":
    main()
