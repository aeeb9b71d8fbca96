"""Self-supervised (SimCLR, MoCo) and cross-batch-memory training on scikit-learn's digits.

Two tables:

1. Held-out retrieval (leave-one-out MAP@R and P@1, cosine, `tfmetric.metrics`)
   of embeddings learned **without labels** (SimCLR: `NTXentLoss` on two views
   from `tfmetric.data.multi_view_dataset`; MoCo: `MomentumContrastModel`)
   beside raw pixels and a supervised triplet model (semi-hard, the same CNN),
   under two protocols: `seen` (70/30 split within classes, as
   `benchmarks/quality.py`) and `unseen` (train on digits 0-4, test on the
   unseen digits 5-9). Self-supervised models are evaluated on the encoder
   output (before SimCLR's projection head).
2. Cross-batch memory: `ContrastiveLoss` with batches of 16, plain or in a
   `CrossBatchMemoryModel` (memory of 512), against plain batches of 256; the
   same number of epochs (samples seen), both protocols.

    python benchmarks/self_supervised.py                 # both tables
    python benchmarks/self_supervised.py --epochs 5      # quicker
    python benchmarks/self_supervised.py --write         # also updates RESULTS.md
"""

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

import _results  # noqa: E402  (benchmarks/_results.py, beside this script)
import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import tfmetric  # noqa: E402

HEADING = "## Self-supervised and cross-batch memory (digits)"


def _protocols(seed):
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int64")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, stratify=y, random_state=seed
    )
    seen = y < 5
    return {
        "seen (70/30 within classes)": (x_train, y_train, x_test, y_test),
        "unseen (train 0-4, test 5-9)": (x[seen], y[seen], x[~seen], y[~seen]),
    }


def _cnn(dim=64, normalise=False):
    layers = [
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(dim),
    ]
    if normalise:
        layers.append(keras.layers.UnitNormalization())
    return keras.Sequential(layers)


def _augment():
    return tfmetric.data.image_augmentation(
        max_shift=0.125, contrast=0.3, brightness=0.1, noise_stddev=0.1, cutout=0.25
    )


def _scores(embeddings, labels):
    scores = tfmetric.metrics.evaluate_retrieval(
        embeddings, labels, distance="cosine", metrics=["map_at_r", "precision_at_1"]
    )
    return scores["map_at_r"], scores["precision_at_1"]


def _simclr(x, args):
    encoder = _cnn()
    head = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(32)])
    model = keras.Sequential([encoder, head])
    model.compile(
        keras.optimizers.Adam(1e-3),
        loss=tfmetric.losses.NTXentLoss(temperature=0.2),
        jit_compile=True,
    )
    dataset = tfmetric.data.multi_view_dataset(x, args.ssl_batch, _augment(), seed=args.seed)
    model.fit(dataset, steps_per_epoch=len(x) // args.ssl_batch, epochs=args.epochs, verbose=0)
    return encoder


def _moco(x, args):
    encoder = _cnn()
    model = tfmetric.models.MomentumContrastModel(
        encoder, queue_size=1024, momentum=0.99, temperature=0.2
    )
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=True)
    dataset = tfmetric.data.multi_view_dataset(x, args.ssl_batch, _augment(), seed=args.seed)
    model.fit(dataset, steps_per_epoch=len(x) // args.ssl_batch, epochs=args.epochs, verbose=0)
    return encoder


def _triplet(x, y, args):
    model = _cnn(normalise=True)
    model.compile(
        keras.optimizers.Adam(1e-3),
        loss=tfmetric.losses.TripletLoss(margin=0.2, mining="semi-hard"),
        jit_compile=True,
    )
    model.fit(x, y, batch_size=128, epochs=args.epochs, verbose=0)
    return model


def _xbm(x, y, args, batch, memory):
    embedder = _cnn(normalise=True)
    loss = tfmetric.losses.ContrastiveLoss(margin=1.0)
    if memory:
        model = tfmetric.models.CrossBatchMemoryModel(embedder, memory_size=memory)
    else:
        model = embedder
    model.compile(keras.optimizers.Adam(1e-3), loss=loss, jit_compile=True)
    steps = len(x) // batch
    order = np.random.default_rng(args.seed).permutation(len(x))
    x, y = x[order][: steps * batch], y[order][: steps * batch]
    model.fit(x, y, batch_size=batch, epochs=args.epochs, verbose=0)
    return embedder


def _row(table, protocol, method, fn, x_test, y_test):
    keras.utils.set_random_seed(ARGS.seed)
    start = time.perf_counter()
    embedder = fn()
    seconds = time.perf_counter() - start
    embeddings = embedder.predict(x_test, batch_size=512, verbose=0)
    map_r, p1 = _scores(embeddings, y_test)
    table.append((protocol, method, map_r, p1, seconds))
    print(f"{protocol} | {method}: MAP@R {map_r:.3f} P@1 {p1:.3f} ({seconds:.0f} s)", flush=True)


def _markdown(rows):
    lines = ["| protocol | method | labels | MAP@R | P@1 | train s |", "|---|---|---|---:|---:|---:|"]
    for protocol, method, map_r, p1, seconds in rows:
        labels = "no" if method.startswith(("SimCLR", "MoCo", "raw")) else "yes"
        time_cell = "—" if seconds is None else f"{seconds:.0f}"
        lines.append(
            f"| {protocol} | {method} | {labels} | {map_r:.3f} | {p1:.3f} | {time_cell} |"
        )
    return "\n".join(lines)


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--ssl-batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", default="", help="comma-separated: ssl, xbm, moco, triplet")
    parser.add_argument("--write", action="store_true", help=f"update {HEADING!r} in RESULTS.md")
    ARGS = args = parser.parse_args()
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    load = os.getloadavg()[0]
    ssl_rows, xbm_rows = [], []
    protocols = _protocols(args.seed)
    for protocol, (x_train, y_train, x_test, y_test) in protocols.items():
        raw = _scores(x_test.reshape(len(x_test), -1), y_test)
        ssl_rows.append((protocol, "raw pixels", *raw, None))
        if "ssl" not in skip:
            _row(ssl_rows, protocol, "SimCLR (NTXentLoss, 2 views, batch 128)",
                 lambda x=x_train: _simclr(x, args), x_test, y_test)
        if "moco" not in skip:
            _row(ssl_rows, protocol, "MoCo (queue 1024, momentum 0.99, batch 128)",
                 lambda x=x_train: _moco(x, args), x_test, y_test)
        if "triplet" not in skip:
            _row(ssl_rows, protocol, "supervised TripletLoss semi-hard (batch 128)",
                 lambda x=x_train, y=y_train: _triplet(x, y, args), x_test, y_test)
    for protocol, (x_train, y_train, x_test, y_test) in protocols.items():
        if "xbm" in skip:
            break
        for method, batch, memory in (
            ("ContrastiveLoss, batches of 16", 16, 0),
            ("ContrastiveLoss, batches of 16 + XBM memory 512", 16, 512),
            ("ContrastiveLoss, batches of 256", 256, 0),
        ):
            _row(xbm_rows, protocol, method,
                 lambda b=batch, m=memory, x=x_train, y=y_train: _xbm(x, y, args, b, m),
                 x_test, y_test)
    machine = (
        f"{platform.machine()} CPU, {os.cpu_count()} cores, load average {load:.1f} at the start "
        "(shared with other jobs: times are indicative, compare within a table)"
    )
    tables = [_markdown(ssl_rows)] + ([_markdown(xbm_rows)] if xbm_rows else [])
    for table in tables:
        print(table)
    if args.write:
        section = "\n".join(
            [
                HEADING,
                "",
                f"`python benchmarks/self_supervised.py --epochs {args.epochs}` (seed {args.seed}): "
                "the CNN of `benchmarks/quality.py` (64-d), leave-one-out retrieval on the test "
                "digits with the cosine distance. SimCLR/MoCo see no labels (two views: shift, "
                "contrast, brightness, noise, 2×2 cut-out) and are evaluated before the "
                f"projection head. Machine: {machine}.",
                "",
                tables[0],
                "",
                "Cross-batch memory (XBM, Wang et al. 2020): same CNN, unit-normalised, "
                f"`ContrastiveLoss(margin=1.0)`, {args.epochs} epochs for every row (the same "
                "samples seen; batches of 16 take 16× the steps).",
                "",
                tables[1] if len(tables) > 1 else "(not run)",
                "",
            ]
        )
        _results.replace_section(HEADING, section)


if __name__ == "__main__":
    main()
