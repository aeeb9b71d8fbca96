"""Time of `tfmetric.metrics.evaluate_retrieval` under the JAX backend, on whatever device JAX picks.

Leave-one-out over `n` random-cluster embeddings (D = 128, `n / 100` classes,
as `benchmarks/evaluation.py`): the MAP@R family (Precision@1, R-precision,
MAP@R, MRR), then the same with full-ranking mAP. Each is called twice in one
process: the first call includes compiling its kernels (and, for the very
first, the device's start-up), the second is the compiled cost. The table
names the device; nothing is written for a device that was not measured.

    python benchmarks/evaluation_jax.py --sizes 20000,100000 --out table.md
"""

import argparse
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _results  # noqa: E402  (benchmarks/_results.py, beside this script)

FAMILY = ("precision_at_1", "r_precision", "map_at_r", "mean_reciprocal_rank")
DIM = 128


def clustered(n, seed=0, noise=1.5):
    """`n` points around `n // 100` class means ~ N(0, 1), with their labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = max(n // 100, 1)
    means = rng.normal(size=(classes, DIM)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    return means[labels] + noise * rng.normal(size=(n, DIM)).astype(np.float32), labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args()
    import jax

    import tfmetric

    device = jax.devices()[0]
    lines = [
        f"`python benchmarks/evaluation_jax.py --sizes {args.sizes}`. Device: "
        f"{device.platform.upper()} ({getattr(device, 'device_kind', '')}), jax {jax.__version__}.",
        "",
        "| n (leave-one-out) | metrics | first call s | second call s | MAP@R |",
        "|---:|---|---:|---:|---:|",
    ]
    for n in (int(s) for s in args.sizes.split(",")):
        x, y = clustered(n)
        for name, metrics in (
            ("MAP@R family", FAMILY),
            ("family + full-ranking mAP", FAMILY + ("mean_average_precision",)),
        ):
            times = []
            for _ in range(2):
                start = time.perf_counter()
                result = tfmetric.metrics.evaluate_retrieval(x, y, metrics=metrics)
                times.append(time.perf_counter() - start)
            lines.append(
                f"| {n} | {name} | {times[0]:.2f} | {times[1]:.2f} | {result['map_at_r']:.4f} |"
            )
            print(lines[-1], flush=True)
    _results.print_table(lines, args.out)


if __name__ == "__main__":
    main()
