"""Forward+backward time and peak memory of every in-batch loss, beside the GEMM floor.

For each batch size B (D = 128 by default) and each loss, one XLA-compiled step
computes the loss and its gradient with respect to the embeddings. The floor,
measured in the same run, is the same step for `sum(euclidean_distances(x))`:
the pairwise GEMM every loss needs, forward and backward. Batches are P×K
("PK") batches with K samples per class, as mining losses are trained on.

Each (loss, B) runs in its own process, which times the loss and the floor in
alternating rounds (one floor step, one loss step, back to back) so that both
see the same load on a shared machine; the ratio is the median of the
per-round ratios, in wall-clock and in process CPU time. The peak resident
memory (`ru_maxrss`) is taken before the floor is compiled: the loss's own.

    python benchmarks/losses.py                      # B = 1024 ... 8192
    python benchmarks/losses.py --sizes 1024 --rounds 5 --losses Triplet,Lifted
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

import _results  # noqa: E402  (benchmarks/_results.py, beside this script)

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


def compiled_step(fn):
    """`step(embeddings, y) -> (fn(y, embeddings), its gradient wrt embeddings)`, XLA-compiled."""
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def step(embeddings, y):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            value = fn(y, embeddings)
        return value, tape.gradient(value, embeddings)

    return step


def _steps(name, size, dim, samples_per_class):
    """The compiled forward+backward steps of the loss `name` and of the floor, with their inputs."""
    import numpy as np
    import tensorflow as tf

    from tfmetric import distances

    loss = _losses()[name]
    rng = np.random.default_rng(0)
    labels = tf.constant(np.arange(size) // samples_per_class, "int32")
    x = tf.constant(rng.normal(size=(size, dim)).astype("float32"))

    def floor_fn(y, e):
        return tf.reduce_sum(distances.Euclidean()(e))

    floor = compiled_step(floor_fn)
    step = compiled_step(floor_fn if loss is None else loss)  # the floor's row: two copies
    return step, floor, x, labels


def _time(step, x, labels):
    """Wall and process-CPU seconds of one step (its result fetched)."""
    wall, cpu = time.perf_counter(), time.process_time()
    value, grad = step(x, labels)
    grad.numpy()
    return time.perf_counter() - wall, time.process_time() - cpu, value, grad


def _worker(name, size, dim, samples_per_class, rounds, peak_is_own=True):
    """Times the loss `name` and the floor in alternating rounds, in one process.

    The loss is compiled and run first, so the peak resident memory recorded
    before the floor is compiled is the loss's own (plus TensorFlow's). Each
    round times one floor step and one loss step back to back (their order
    alternating), so both see the same machine load; the ratio is the median
    of the per-round ratios.
    """
    import numpy as np

    step, floor, x, labels = _steps(name, size, dim, samples_per_class)
    start = time.perf_counter()
    _, _, value, grad = _time(step, x, labels)
    compile_s = time.perf_counter() - start
    _time(step, x, labels)
    finite = bool(np.isfinite(value.numpy()) and np.all(np.isfinite(grad.numpy())))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if peak_is_own else None
    _time(floor, x, labels)
    _time(floor, x, labels)
    wall, cpu, floor_wall, floor_cpu = [], [], [], []
    for r in range(rounds):
        pair = (floor, step) if r % 2 == 0 else (step, floor)
        for which in pair:
            w, c, _, _ = _time(which, x, labels)
            (floor_wall if which is floor else wall).append(w)
            (floor_cpu if which is floor else cpu).append(c)
    wall, cpu, floor_wall, floor_cpu = map(np.asarray, (wall, cpu, floor_wall, floor_cpu))
    return {
        "ms": 1000 * float(np.median(wall)),
        "floor_ms": 1000 * float(np.median(floor_wall)),
        "ratio": float(np.median(wall / floor_wall)),
        "cpu_ms": 1000 * float(np.median(cpu)),
        "floor_cpu_ms": 1000 * float(np.median(floor_cpu)),
        "cpu_ratio": float(np.median(cpu / floor_cpu)),
        "peak_mib": peak,
        "compile_s": compile_s,
        "finite": finite,
    }


def _machine():
    cpu = _results.cpu_name()
    import tensorflow as tf

    return f"{cpu}, {os.cpu_count()} cores, TensorFlow {tf.__version__}, XLA (jit_compile=True), CPU"


def _load():
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024,2048,4096,8192")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--samples_per_class", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7, help="alternating floor/loss rounds")
    parser.add_argument("--losses", default="", help="comma-separated substrings selecting losses")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    parser.add_argument(
        "--one_process", action="store_true",
        help="run every row in this process (faster on a loaded machine; no peak memory column)",
    )
    parser.add_argument("--worker", nargs=2, metavar=("LOSS", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = _worker(
            args.worker[0], int(args.worker[1]), args.dim, args.samples_per_class, args.rounds
        )
        print(json.dumps(result))
        return

    names = list(_losses())
    if args.losses:
        wanted = args.losses.split(",")
        names = [n for n in names if n != FLOOR and any(w in n for w in wanted)]
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"Machine: {_machine()}")
    print(
        f"D = {args.dim}, P×K batches with K = {args.samples_per_class}; {args.rounds} rounds of "
        "(floor step, loss step) in one process per row, medians; load average at start "
        f"{_load()} (1/5/15 min)"
    )
    print()
    print(
        "| loss | B | fwd+bwd ms | floor ms | × floor | CPU ms | floor CPU ms | × floor (CPU) "
        "| peak RSS MiB | finite |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for size in sizes:
        for name in names:
            command = [
                sys.executable, __file__, "--worker", name, str(size), "--dim", str(args.dim),
                "--samples_per_class", str(args.samples_per_class), "--rounds", str(args.rounds),
            ]
            try:
                if args.one_process:
                    r = _worker(name, size, args.dim, args.samples_per_class, args.rounds, False)
                else:
                    done = subprocess.run(
                        command, capture_output=True, text=True, timeout=args.timeout
                    )
                    r = json.loads(done.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                print(f"| {name} | {size} | timeout > {args.timeout:.0f} s | | | | | | | |", flush=True)
                continue
            except (IndexError, json.JSONDecodeError):
                reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:80]
                print(f"| {name} | {size} | failed: {reason} | | | | | | | |", flush=True)
                continue
            print(
                f"| {name} | {size} | {r['ms']:.1f} | {r['floor_ms']:.1f} | {r['ratio']:.2f} | "
                f"{r['cpu_ms']:.1f} | {r['floor_cpu_ms']:.1f} | {r['cpu_ratio']:.2f} | "
                f"{'' if r['peak_mib'] is None else round(r['peak_mib'])} | "
                f"{'yes' if r['finite'] else 'NO'} |",
                flush=True,
            )
    print()
    print(f"Load average at the end: {_load()}")


if __name__ == "__main__":
    main()
