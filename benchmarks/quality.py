"""Held-out retrieval quality of every tfmetric loss on scikit-learn's digits.

The same small CNN is trained with each in-batch loss of `tfmetric.losses`
and each proxy head of `tfmetric.layers` (through
`tfmetric.models.ProxyModel`) on a 70/30 split of `load_digits` (8×8 images,
all 10 classes, split within classes). The held-out 30% is then searched
leave-one-out with the cosine distance, and the table gives MAP@R and
Precision@1 (`tfmetric.metrics`) beside raw-pixel retrieval.

Every loss gets the same network, optimiser (Adam), number of epochs and
batch size (except N-pairs, trained on its own N-pair batches of every class
twice, as many samples per epoch); per-loss settings (margins, temperatures,
learning rate, normalisation) are listed in `CONFIGS` and printed in the table.

    python benchmarks/quality.py                    # all losses, prints a table
    python benchmarks/quality.py --only Circle,SupCon --epochs 10
    python benchmarks/quality.py --write            # also updates RESULTS.md
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

try:
    import tfmetric.metrics as retrieval_metrics  # noqa: E402
except ImportError:  # tfmetric.metrics not in this checkout: local numpy fallback
    retrieval_metrics = None
try:
    import tfmetric.layers  # noqa: E402, F401
    import tfmetric.models  # noqa: E402, F401
except ImportError:  # proxy heads not available: in-batch losses only
    pass

HEADING = "## Quality (digits)"

L = tfmetric.losses
# name -> (paper, loss factory, learning rate, True: L2-normalise the embeddings,
# a float: L2 activity penalty of that weight, False: raw embeddings)
CONFIGS = {
    "TripletLoss semi-hard": (
        "Schroff et al. 2015",
        lambda: L.TripletLoss(margin=0.2, mining="semi-hard"),
        1e-3,
        True,
    ),
    "TripletLoss hard": (
        "Hermans et al. 2017",
        lambda: L.TripletLoss(margin=0.2, mining="hard"),
        1e-3,
        True,
    ),
    "TripletLoss all": (
        "Hermans et al. 2017",
        lambda: L.TripletLoss(margin=0.2, mining="all"),
        1e-3,
        True,
    ),
    "ContrastiveLoss": (
        "Hadsell et al. 2006",
        lambda: L.ContrastiveLoss(margin=1.0),
        1e-3,
        True,
    ),
    "MultiSimilarityLoss": ("Wang et al. 2019", lambda: L.MultiSimilarityLoss(), 1e-3, False),
    "CircleLoss": ("Sun et al. 2020", lambda: L.CircleLoss(), 1e-3, False),
    "SupervisedContrastiveLoss": (
        "Khosla et al. 2020",
        lambda: L.SupervisedContrastiveLoss(temperature=0.1),
        1e-3,
        False,
    ),
    "NTXentLoss": ("Chen et al. 2020", lambda: L.NTXentLoss(temperature=0.1), 1e-3, False),
    "LiftedStructureLoss": (
        "Hermans et al. 2017",
        lambda: L.LiftedStructureLoss(margin=1.0),
        1e-3,
        True,
    ),
    # N-pair batches as in the paper: every class twice (see `_pair_batches`).
    "NPairsLoss": ("Sohn 2016", lambda: L.NPairsLoss(distance="cosine"), 3e-3, True),
    "SoftNearestNeighborLoss": (
        "Frosst et al. 2019",
        lambda: L.SoftNearestNeighborLoss(temperature=0.5),
        1e-3,
        True,
    ),
}

HEADS = {
    "ArcFace": ("Deng et al. 2019", {}),
    "CosFace": ("Wang et al. 2018", {}),
    "SubCenterArcFace": ("Deng et al. 2020", {}),
    "NormalizedSoftmax": ("Zhai and Wu 2019", {"temperature": 0.2}),
    "ProxyAnchor": ("Kim et al. 2020", {}),
    "ProxyNCA": ("Movshovitz-Attias et al. 2017", {}),
}


def _data(seed):
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    return train_test_split(
        x, digits.target.astype("int64"), test_size=0.3, stratify=digits.target, random_state=seed
    )


def _embedder(normalise, dim=64):
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
    if normalise is True:
        layers.append(keras.layers.UnitNormalization())
    elif normalise:
        # Sohn's N-pair loss keeps raw embeddings with an L2 penalty on them.
        layers.append(keras.layers.ActivityRegularization(l2=normalise))
    return keras.Sequential(layers)


def _pair_batches(x, y, epochs, seed):
    """Batches of one pair per class (Sohn's N-pair batches), as many samples per epoch."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(y == label) for label in np.unique(y)]
    steps = epochs * len(y) // (2 * len(members))
    order = np.concatenate(
        [np.concatenate([rng.choice(m, 2, replace=False) for m in members]) for _ in range(steps)]
    )
    return x[order], y[order], 2 * len(members)


def _settings(obj):
    config = obj.get_config()
    skip = {"name", "reduction", "dtype", "trainable", "num_classes", "cross_replica"}
    return ", ".join(
        f"{key}={value}" for key, value in config.items() if key not in skip and value is not None
    )


def _local_scores(embeddings, labels):
    """Leave-one-out cosine MAP@R and P@1 (Musgrave et al. 2020), ties broken by index."""
    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :-1]
    relevant = labels[order] == labels[:, None]
    r = relevant.sum(axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    precision = np.cumsum(relevant, axis=1) / ranks
    within_r = ranks[None, :] <= r[:, None]
    map_r = (precision * relevant * within_r).sum(axis=1) / np.maximum(r, 1)
    return float(map_r[r > 0].mean()), float(relevant[:, 0].mean())


def _scores(embeddings, labels):
    if retrieval_metrics is None:
        return _local_scores(embeddings, labels)
    scores = retrieval_metrics.evaluate_retrieval(
        embeddings, labels, distance="cosine", metrics=["map_at_r", "precision_at_1"]
    )
    return scores["map_at_r"], scores["precision_at_1"]


def _train(name, args, data):
    x_train, x_test, y_train, y_test = data
    keras.utils.set_random_seed(args.seed)
    if name in CONFIGS:
        paper, factory, lr, normalise = CONFIGS[name]
        loss = factory()
        model = _embedder(normalise)
        model.compile(keras.optimizers.Adam(lr), loss=loss, jit_compile=True)
        settings = _settings(loss)
    else:
        paper, kwargs = HEADS[name]
        head = getattr(tfmetric.layers, name)(num_classes=10, **kwargs)
        model = tfmetric.models.ProxyModel(_embedder(False), head)
        lr = 1e-3
        model.compile(keras.optimizers.Adam(lr), jit_compile=True)
        settings = _settings(head)
    start = time.perf_counter()
    if name == "NPairsLoss":
        x_pairs, y_pairs, size = _pair_batches(x_train, y_train, args.epochs, args.seed)
        settings += f", batch={size} (one pair per class)"
        fit = {"x": x_pairs, "y": y_pairs, "batch_size": size, "epochs": 1, "shuffle": False}
    else:
        fit = {"x": x_train, "y": y_train, "batch_size": args.batch_size, "epochs": args.epochs}
    history = model.fit(**fit, verbose=0).history["loss"]
    seconds = time.perf_counter() - start
    embedder = getattr(model, "embedder", model)
    embeddings = embedder.predict(x_test, batch_size=512, verbose=0)
    map_r, p_at_1 = _scores(embeddings, y_test)
    return {
        "name": name,
        "paper": paper,
        "settings": f"{settings}, lr={lr:g}",
        "map_at_r": map_r,
        "precision_at_1": p_at_1,
        "final_loss": history[-1],
        "seconds": seconds,
    }


def _table(rows, baseline, args):
    lines = [
        "| loss | paper | key arguments | MAP@R | P@1 | train s |",
        "|---|---|---|---:|---:|---:|",
        f"| raw pixels (no training) | — | cosine on 64 pixels | {baseline[0]:.3f} | "
        f"{baseline[1]:.3f} | — |",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['paper']} | {row['settings']} | {row['map_at_r']:.3f} | "
            f"{row['precision_at_1']:.3f} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated substrings of loss names")
    parser.add_argument("--write", action="store_true", help=f"update {HEADING!r} in RESULTS.md")
    args = parser.parse_args()

    data = _data(args.seed)
    layers = getattr(tfmetric, "layers", None)
    names = list(CONFIGS) + [name for name in HEADS if hasattr(layers, name)]
    if args.only:
        wanted = [part.strip() for part in args.only.split(",") if part.strip()]
        names = [name for name in names if any(part in name for part in wanted)]
    baseline = _scores(data[1].reshape(len(data[1]), -1), data[3])
    print(f"raw pixels: MAP@R {baseline[0]:.3f}  P@1 {baseline[1]:.3f}", flush=True)
    if retrieval_metrics is not None:
        local = _local_scores(data[1].reshape(len(data[1]), -1), data[3])
        print(f"(local numpy check: MAP@R {local[0]:.3f}  P@1 {local[1]:.3f})", flush=True)
    rows = []
    for name in names:
        row = _train(name, args, data)
        rows.append(row)
        print(
            f"{name}: MAP@R {row['map_at_r']:.3f}  P@1 {row['precision_at_1']:.3f}  "
            f"loss {row['final_loss']:.4f}  {row['seconds']:.0f}s",
            flush=True,
        )
    table = _table(rows, baseline, args)
    print(table)
    if args.write:
        section = "\n".join(
            [
                HEADING,
                "",
                f"`python benchmarks/quality.py` (epochs={args.epochs}, batch={args.batch_size}, "
                f"seed={args.seed}): the same CNN (3 conv + 2 dense, 64-d embeddings) trained on "
                "70% of scikit-learn's digits (split within classes), held-out 30% searched "
                "leave-one-out with the cosine distance (`tfmetric.metrics`). "
                f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores, shared with other "
                "jobs (times are indicative).",
                "",
                table,
                "",
            ]
        )
        _results.replace_section(HEADING, section)


if __name__ == "__main__":
    main()
