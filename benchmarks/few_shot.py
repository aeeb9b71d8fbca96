"""`n_way_k_shot_accuracy` per distance, with the active Keras backend, and prints a table.

The few-shot protocol (Vinyals et al. 2016) draws episodes of `n_way` classes
with `k_shot` supports and one query each and scores each query by its nearest
support. Translation-invariant distances (euclidean) are computed in float64
numpy; any other distance (cosine, manhattan, a learned one) goes through the
library's distance, in chunks of episodes. Each case runs twice in the same
process: the first call includes what the backend compiles or warms up, the
second shows a repeated evaluation (an epoch callback). CPU seconds are the
process's (`time.process_time`), wall seconds the call's.

    python benchmarks/few_shot.py                   # TensorFlow
    KERAS_BACKEND=jax python benchmarks/few_shot.py # JAX
    python benchmarks/few_shot.py --write           # also update benchmarks/RESULTS.md
                                                    # (a section per backend)
"""

import argparse
import functools
import os
import platform
import sys
import time

import _results

SECTION = "## Few-shot accuracy (`n_way_k_shot_accuracy`), {backend}"
# (samples, dimensions): the trainer's digits embeddings' size, and raw 28 x 28 pixels.
SIZES = [(539, 16), (300, 784)]


def _timed(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--distances", nargs="+", default=["euclidean", "cosine", "manhattan"])
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import keras
    import numpy as np

    import tfmetric

    backend = keras.backend.backend()
    rows = []
    for n, d in SIZES:
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 10, n)
        centres = rng.normal(size=(10, d)) * 2.0 / d**0.25  # neither trivial nor hopeless
        x = (centres[labels] + rng.normal(size=(n, d))).astype("float32")
        for distance in args.distances:
            for k_shot in (1, 5):

                call = functools.partial(
                    tfmetric.metrics.n_way_k_shot_accuracy, x, labels, n_way=5, k_shot=k_shot,
                    episodes=args.episodes, distance=distance,
                )  # fmt: skip
                (accuracy, _), cpu1, wall1 = _timed(call)
                (again, _), cpu2, wall2 = _timed(call)
                assert again == accuracy
                rows.append(
                    f"| {n} x {d} | {distance} | 5-way {k_shot}-shot | {cpu1:.2f} / {wall1:.2f} "
                    f"| {cpu2:.2f} / {wall2:.2f} | {accuracy:.4f} |"
                )
    versions = f"Keras {keras.__version__}, backend {backend}"
    if backend == "jax":
        import jax

        versions += f" (jax {jax.__version__})"
    else:
        import tensorflow as tf

        versions += f" (TensorFlow {tf.__version__})"
    section = SECTION.format(backend=backend)
    lines = [
        section,
        "",
        f"`python benchmarks/few_shot.py` on {_results.cpu_name()} ({platform.machine()}, "
        f"{os.cpu_count()} CPUs), {versions}; {args.episodes} episodes of 5 classes, one query "
        "per class; random-cluster data (10 classes). Each case twice in one process.",
        "",
        "| samples x dims | distance | protocol | first call CPU / wall (s) | second call CPU / "
        "wall (s) | accuracy |",
        "|---|---|---|---:|---:|---:|",
        *rows,
    ]
    table = _results.print_table(lines)
    if args.write:
        _results.replace_section(section, table)


if __name__ == "__main__":
    main()
