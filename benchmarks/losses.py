"""Forward+backward time and peak memory of every in-batch loss, beside the GEMM floor.

For each batch size B (D = 128 by default) and each loss, one XLA-compiled step
computes the loss and its gradient with respect to the embeddings. The floor,
measured in the same run, is the same step for `sum(euclidean_distances(x))`:
the pairwise GEMM every loss needs, forward and backward. Batches are P×K
("PK") batches with K samples per class, as mining losses are trained on.

Each (loss, B) runs in its own process so that the peak resident memory
(`ru_maxrss`) is that configuration's own.

    python benchmarks/losses.py                      # B = 256 ... 8192
    python benchmarks/losses.py --sizes 256,1024 --repeats 3
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FLOOR = "floor: euclidean GEMM + sum"


def _losses():
    import tfmetric

    losses = {FLOOR: None}
    for mining in ("semi-hard", "hard", "all"):
        losses[f"TripletLoss(mining={mining!r})"] = tfmetric.losses.TripletLoss(mining=mining)
    for name in sorted(tfmetric.losses.__all__):
        cls = getattr(tfmetric.losses, name)
        if (
            isinstance(cls, type)
            and issubclass(cls, tfmetric.losses.batch.InBatchLoss)
            and cls is not tfmetric.losses.TripletLoss
        ):
            losses[f"{name}()"] = cls()
    return losses


def _worker(name, size, dim, samples_per_class, repeats):
    import numpy as np
    import tensorflow as tf

    from tfmetric import distances

    loss = _losses()[name]
    rng = np.random.default_rng(0)
    labels = tf.constant(np.arange(size) // samples_per_class, "int32")
    x = tf.constant(rng.normal(size=(size, dim)).astype("float32"))

    @tf.function(jit_compile=True)
    def step(embeddings, y):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            if loss is None:
                value = tf.reduce_sum(distances.Euclidean()(embeddings))
            else:
                value = loss(y, embeddings)
        return value, tape.gradient(value, embeddings)

    start = time.perf_counter()
    value, grad = step(x, labels)
    grad.numpy()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value, grad = step(x, labels)
        grad.numpy()
        times.append(time.perf_counter() - start)
    finite = bool(np.isfinite(value.numpy()) and np.all(np.isfinite(grad.numpy())))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        json.dumps(
            {"ms": 1000 * float(np.median(times)), "peak_mib": peak, "compile_s": compile_s, "finite": finite}
        )
    )


def _machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import tensorflow as tf

    return f"{cpu}, {os.cpu_count()} cores, TensorFlow {tf.__version__}, XLA (jit_compile=True), CPU"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,512,1024,2048,4096,8192")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--samples_per_class", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--losses", default="", help="comma-separated substrings selecting losses")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    parser.add_argument("--worker", nargs=2, metavar=("LOSS", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker[0], int(args.worker[1]), args.dim, args.samples_per_class, args.repeats)
        return

    names = list(_losses())
    if args.losses:
        wanted = args.losses.split(",")
        names = [FLOOR] + [n for n in names if n != FLOOR and any(w in n for w in wanted)]
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"Machine: {_machine()}")
    print(f"D = {args.dim}, P×K batches with K = {args.samples_per_class}, median of {args.repeats} steps")
    print()
    print("| loss | B | fwd+bwd ms | × floor | peak RSS MiB | finite |")
    print("|---|---:|---:|---:|---:|:---:|")
    for size in sizes:
        floor_ms = None
        for name in names:
            command = [
                sys.executable, __file__, "--worker", name, str(size), "--dim", str(args.dim),
                "--samples_per_class", str(args.samples_per_class), "--repeats", str(args.repeats),
            ]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
                result = json.loads(done.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                print(f"| {name} | {size} | timeout > {args.timeout:.0f} s | | | |", flush=True)
                continue
            except (IndexError, json.JSONDecodeError):
                reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:80]
                print(f"| {name} | {size} | failed: {reason} | | | |", flush=True)
                continue
            if name == FLOOR:
                floor_ms = result["ms"]
            ratio = f"{result['ms'] / floor_ms:.2f}" if floor_ms else ""
            print(
                f"| {name} | {size} | {result['ms']:.1f} | {ratio} | {result['peak_mib']:.0f} | "
                f"{'yes' if result['finite'] else 'NO'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
