"""First trace of a loss inside a user's `tf.function`, in a fresh process per loss.

A custom training step (`@tf.function def step(...): loss(y, model(x))`) traces
the loss once; before `tfmetric._src.autograph`, AutoGraph rewrote the source of
every tfmetric function the loss called on that first trace. This script times
`get_concrete_function` of such a step (the loss and its gradient) in a fresh
process per loss (AutoGraph caches conversions per process), then a second
trace of a new `tf.function` in the same process, and prints a table with the
machine named.

    python benchmarks/first_trace.py [--losses TripletLoss CircleLoss ...]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import _results

DEFAULT_LOSSES = [
    "TripletLoss", "MultiSimilarityLoss", "CircleLoss", "SupervisedContrastiveLoss",
    "LiftedStructureLoss", "ContrastiveLoss",
]  # fmt: skip

CHILD = r"""
import json, sys, time
import numpy as np
import tensorflow as tf
import tfmetric

loss = getattr(tfmetric.losses, sys.argv[1])()
x = tf.constant(np.random.default_rng(0).normal(size=(64, 32)).astype("float32"))
y = tf.constant(np.arange(64) % 8)
times = []
for _ in range(2):
    @tf.function
    def step(labels, embeddings):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            value = loss(labels, embeddings)
        return value, tape.gradient(value, embeddings)

    start = time.process_time()
    step.get_concrete_function(y, x)
    times.append(time.process_time() - start)
print(json.dumps(times))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--losses", nargs="+", default=DEFAULT_LOSSES)
    args = parser.parse_args()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    lines = [
        f"Machine: {_results.cpu_name()} ({os.cpu_count()} cores), Python "
        f"{platform.python_version()}; CPU seconds of `get_concrete_function` of a step "
        "computing the loss and its gradient (B = 64, D = 32), a fresh process per loss.",
        "",
        "| loss | first trace (CPU s) | second trace, new tf.function (CPU s) |",
        "|---|---:|---:|",
    ]
    # The step must live in a file: AutoGraph leaves code from `python -c` (no source) alone.
    with tempfile.TemporaryDirectory() as scratch:
        child = os.path.join(scratch, "first_trace_child.py")
        with open(child, "w") as f:
            f.write(CHILD)
        results = {
            name: subprocess.run([sys.executable, child, name], env=env, capture_output=True,
                                 text=True, check=True)  # fmt: skip
            for name in args.losses
        }
    for name, result in results.items():
        first, second = json.loads(result.stdout.strip().splitlines()[-1])
        lines.append(f"| {name} | {first:.2f} | {second:.2f} |")
    _results.print_table(lines)


if __name__ == "__main__":
    main()
