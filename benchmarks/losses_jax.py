"""Forward+backward time of every in-batch loss under the JAX backend (XLA), beside the GEMM floor.

The GPU benchmark of issue 18 (item 5): the same measurement as
`benchmarks/losses.py` — one `jax.jit`-compiled step computing the loss and its
gradient with respect to the embeddings, P×K batches, the floor being the same
step for `sum(euclidean_distances(x))` — but with `KERAS_BACKEND=jax`, on
whatever device JAX picks (a GPU when jax's CUDA wheel and a GPU are present,
else the CPU). The table names the device it ran on; nothing is written for a
device that was not measured.

    python benchmarks/losses_jax.py                          # B = 1024 ... 8192
    python benchmarks/losses_jax.py --sizes 1024,2048 --repeats 5 --write
"""

import argparse
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's tfmetric

import _results  # noqa: E402  (benchmarks/_results.py, beside this script)

HEADING = "## Losses speed under JAX"
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


def measure(loss, size, dim, samples_per_class, repeats, inner):
    """Median milliseconds of one compiled forward+backward step, its scratch memory, finiteness.

    Each of `repeats` timings runs `inner` steps back to back and waits for the
    last (so a fast device is not timed on Python's dispatch alone); the scratch
    memory is XLA's temporary buffers of the compiled step (its
    `memory_analysis()`), or `None` where the backend does not report it.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tfmetric import distances

    rng = np.random.default_rng(0)
    labels = jnp.asarray(np.arange(size) // samples_per_class, jnp.int32)
    x = jnp.asarray(rng.normal(size=(size, dim)).astype("float32"))

    def value(embeddings, y):
        if loss is None:
            return jnp.sum(distances.Euclidean()(embeddings))
        return loss(y, embeddings)

    step = jax.jit(jax.value_and_grad(value)).lower(x, labels).compile()
    try:
        scratch = step.memory_analysis().temp_size_in_bytes / 2**20
    except Exception:  # not every backend/device reports it
        scratch = None
    out, grad = step(x, labels)
    grad.block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            out, grad = step(x, labels)
        grad.block_until_ready()
        times.append((time.perf_counter() - start) / inner)
    finite = bool(np.isfinite(float(out)) and np.all(np.isfinite(np.asarray(grad))))
    return 1000 * float(np.median(times)), scratch, finite


def device_name():
    import jax

    device = jax.devices()[0]
    kind = getattr(device, "device_kind", "") or device.platform
    precision = jax.config.jax_default_matmul_precision or "unset"
    return (
        f"{device.platform.upper()} ({kind}), jax {jax.__version__}, "
        f"jax_default_matmul_precision: {precision} (tfmetric's own products ask for HIGHEST)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048,4096,8192")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--samples-per-class", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=1, help="steps per timing (use ~20 on a GPU)")
    parser.add_argument(
        "--precision",
        default=None,
        choices=("default", "high", "highest"),
        help="jax_default_matmul_precision (on a GPU: 'default' lets float32 products use TF32)",
    )
    parser.add_argument("--out", default=None, help="also write the table to this file")
    parser.add_argument("--only", default=None, help="comma-separated loss names (prefixes)")
    parser.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    if args.precision:
        import jax

        jax.config.update("jax_default_matmul_precision", args.precision)
    losses = _losses()
    if args.only:
        keep = tuple(args.only.split(","))
        losses = {k: v for k, v in losses.items() if k == FLOOR or k.startswith(keep)}
    device = device_name()
    lines = [
        f"`python benchmarks/losses_jax.py {' '.join(sys.argv[1:])}`: forward+backward, `jax.jit`, "
        f"D = {args.dim}, P×K batches with K = {args.samples_per_class}, median of "
        f"{args.repeats} timings of {args.inner} step(s) each; scratch = XLA's temporary buffers "
        f"of the compiled step. Device: {device}.",
        "",
        "| loss | B | fwd+bwd ms | × floor | scratch MiB | finite |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for size in (int(s) for s in args.sizes.split(",")):
        floor = None
        for name, loss in losses.items():
            ms, scratch, finite = measure(
                loss, size, args.dim, args.samples_per_class, args.repeats, args.inner
            )
            floor = ms if loss is None else floor
            mib = "n/a" if scratch is None else f"{scratch:.0f}"
            lines.append(
                f"| {name} | {size} | {ms:.3f} | {ms / floor:.2f} | {mib} | "
                f"{'yes' if finite else 'NO'} |"
            )
            print(lines[-1], flush=True)
    text = _results.print_table(lines, args.out)
    if args.write:
        _results.append_section(HEADING, f"{HEADING}\n\n{text}")


if __name__ == "__main__":
    main()
