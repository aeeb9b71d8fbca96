"""What the trainer writes: report.json, the printed table, PNG plots, projector files.

Every file is written to a temporary path in its directory and renamed, so a
kill never leaves a truncated file behind.
"""

import math
import os

import numpy as np

from tfmetric._src import files

FLAGS_FILE = "flags.json"
BACKUP_DIR = "backup"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
PAIR_MODEL_FILE = "pair_model.keras"
LOGS_DIR = "logs"
EXPORT_DIR = "export"

REPORT_FILE = "report.json"
CURVES_FILE = "training_curves.png"
PROJECTION_FILE = "embeddings_2d.png"
ROC_FILE = "roc_curve.png"
NEIGHBORS_FILE = "nearest_neighbors.png"
PLOT_FILES = (CURVES_FILE, PROJECTION_FILE, ROC_FILE, NEIGHBORS_FILE)
PROJECTOR_DIR = os.path.join(LOGS_DIR, "projector")
# What the main job writes in --model_dir; --overwrite removes these and nothing else.
OWN_OUTPUTS = (FLAGS_FILE, BACKUP_DIR, HISTORY_FILE, MODEL_FILE, PAIR_MODEL_FILE, LOGS_DIR,
               EXPORT_DIR, REPORT_FILE, *PLOT_FILES)  # fmt: skip
_TABLE_ROWS = (
    ("precision_at_1", "Precision@1"),
    ("map_at_r", "MAP@R"),
    ("r_precision", "R-precision"),
    ("roc_auc", "Verification ROC AUC"),
    ("eer", "Verification EER"),
    ("pair_roc_auc", "Pair ROC AUC"),
    ("pair_eer", "Pair EER"),
    ("tar_at_far_1e-3", "TAR@FAR=1e-3"),
    ("pair_accuracy", "Pair accuracy"),
    ("5_way_1_shot", "5-way 1-shot"),
    ("5_way_5_shot", "5-way 5-shot"),
)


def atomic_path(path):
    """Yields a temporary path next to `path`; renames it to `path` on success."""
    return files.atomic_path(path, makedirs=True)


def write_json(path, obj):
    files.write_json(path, obj, makedirs=True)


def strict_json(obj):
    """`obj` with NaN and infinite floats as `None`: strict JSON that any parser reads.

    Python writes them as `NaN` / `Infinity`, which JSON has not (`jq`,
    JavaScript's `JSON.parse` and Go refuse the file); a fold's threshold of
    the pairs protocol is `-inf` when no threshold beats accepting nothing.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: strict_json(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(value) for value in obj]
    return obj


def write_report(path, report):
    """Writes the run's report as strict JSON (non-finite numbers as `null`), atomically."""
    write_json(path, strict_json(report))


def write_text(path, text):
    files.write_text(path, text, makedirs=True)


def format_table(report):
    """The held-out numbers as a text table: model vs raw-input baseline."""
    model, baseline = report["held_out"]["model"], report["held_out"]["raw_input_baseline"]
    split = report["split"]
    kind = f", --model_kind={report['model_kind']}" if "model_kind" in report else ""
    lines = [
        f"Held-out evaluation: {report['dataset']} (--protocol={report['protocol']}{kind}), "
        f"{split['test_samples']} test samples of {split['test_classes']} classes",
        f"{'metric':<22} {'model':>9} {'raw input':>10}",
        "-" * 43,
    ]
    for key, label in _TABLE_ROWS:
        if key in model or key in baseline:
            lines.append(f"{label:<22} {_cell(model.get(key)):>9} {_cell(baseline.get(key)):>10}")
    if "threshold" in model:
        lines.append(f"Pair threshold (best accuracy): {model['threshold']:.4g} (model), "
                     f"{baseline['threshold']:.4g} (raw input); {model['pairs']} held-out pairs, "
                     "accuracy 2-fold cross-validated")  # fmt: skip
    return "\n".join(lines)


def _cell(value):
    return "-" if value is None else f"{value:.4f}"


def _savefig(figure, path):
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history, path):
    """One panel per logged quantity (loss, learning rate, validation metrics)."""
    plt = _pyplot()
    keys = [k for k, v in history.items() if len(v) and np.all(np.isfinite(v))]
    keys = sorted(keys, key=lambda k: (k != "loss", k))
    figure, axes = plt.subplots(1, max(1, len(keys)), figsize=(4 * max(1, len(keys)), 3.2))
    axes = np.atleast_1d(axes)
    for axis, key in zip(axes, keys, strict=False):
        values = history[key]
        axis.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3)
        axis.set_title(key)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    _savefig(figure, path)
    plt.close(figure)


def project_2d(embeddings, method="pca", seed=0, max_points=3000):
    """2-D PCA or t-SNE of the embeddings (a seeded sample beyond `max_points`).

    Returns:
        `(points, indices)`: the `(n, 2)` points and the rows they come from.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method not in ("pca", "tsne"):
        raise ValueError(f"`--projection` must be 'pca' or 'tsne'; got {method!r}.")
    x = np.asarray(embeddings, np.float32)
    indices = np.arange(len(x))
    if len(x) > max_points:
        indices = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
        x = x[indices]
    if x.shape[1] <= 2:
        return np.pad(x, [(0, 0), (0, 2 - x.shape[1])]), indices
    if method == "tsne" and len(x) > 5:
        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x), indices
    return PCA(2, random_state=seed).fit_transform(x), indices


def plot_projection(embeddings, labels, class_names, path, method="pca", seed=0):
    """Scatter plot of the 2-D projection of the embeddings, coloured by class."""
    plt = _pyplot()
    points, indices = project_2d(embeddings, method, seed)
    labels = np.asarray(labels)[indices]
    figure, axis = plt.subplots(figsize=(6, 5.5))
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "turbo")
    for rank, c in enumerate(classes):
        members = labels == c
        color = cmap(rank % 10 if len(classes) <= 10 else rank / max(1, len(classes) - 1))
        axis.scatter(*points[members].T, s=8, color=color, label=class_names[c])
    if len(classes) <= 20:
        axis.legend(markerscale=2, fontsize=7, loc="best", ncol=2)
    axis.set_title(f"{'t-SNE' if method == 'tsne' else 'PCA'} of the held-out embeddings")
    axis.set_xticks([])
    axis.set_yticks([])
    _savefig(figure, path)
    plt.close(figure)


def plot_roc(curves, path):
    """`curves`: `{label: (fpr, tpr, auc)}`."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 5))
    for label, (fpr, tpr, auc) in curves.items():
        axis.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})")
    axis.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
    axis.set_xlabel("false positive rate (different-class pairs)")
    axis.set_ylabel("true positive rate (same-class pairs)")
    axis.set_title("Held-out verification ROC")
    axis.legend(loc="lower right")
    axis.grid(alpha=0.3)
    _savefig(figure, path)
    plt.close(figure)


def _tile(image, size, border, color):
    """An image as an RGB uint8 tile of `size` pixels with a coloured border."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    inner = size - 2 * border
    resized = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).resize(
        (inner, inner), Image.NEAREST
    )
    tile = np.empty((size, size, 3), np.uint8)
    tile[...] = color
    tile[border:-border, border:-border] = np.asarray(resized)
    return tile


def plot_neighbors(images, labels, class_names, neighbors, path, queries=8, seed=0):
    """A grid of query images (first column) and their top-5 neighbours; red = wrong class.

    One image of tiles (a border per tile: grey for the query, green for a
    neighbour of its class, red otherwise) drawn in a single axes.
    """
    plt = _pyplot()
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(labels), min(queries, len(labels)), replace=False))
    k = min(5, neighbors.shape[1])
    size, border, gap = 64, 4, 8
    grey, green, red = (128, 128, 128), (0, 160, 0), (220, 0, 0)
    canvas = np.full((len(rows) * (size + gap), (k + 1) * size + gap, 3), 255, np.uint8)
    figure, axis = plt.subplots(figsize=(1.3 * (k + 1), 1.4 * len(rows)))
    for r, q in enumerate(rows):
        top = r * (size + gap) + gap
        canvas[top : top + size, :size] = _tile(images[q], size, border, grey)
        axis.text(size / 2, top - 1, f"query: {class_names[labels[q]]}", ha="center",
                  va="bottom", fontsize=6)  # fmt: skip
        for c in range(k):
            n = neighbors[q, c]
            correct = labels[n] == labels[q]
            left = (c + 1) * size + gap
            canvas[top : top + size, left : left + size] = _tile(
                images[n], size, border, green if correct else red
            )
            axis.text(left + size / 2, top - 1, class_names[labels[n]], ha="center", va="bottom",
                      fontsize=6, color="green" if correct else "red")  # fmt: skip
    axis.imshow(canvas, interpolation="nearest")
    axis.set_axis_off()
    axis.set_title("Held-out nearest neighbours (query, then top-5)", fontsize=9)
    _savefig(figure, path)
    plt.close(figure)


def sprite(images, max_images=10000):
    """A square sprite image (uint8) of the inputs, as the projector expects; None if too many."""
    images = np.asarray(images)
    if len(images) > max_images:
        return None
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n = int(np.ceil(np.sqrt(len(images))))
    h, w = images.shape[1:3]
    canvas = np.full((n * h, n * w, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, n)
        canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = image
    return canvas


def write_projector(model_dir, embeddings, labels, class_names, images=None):
    """TensorBoard embedding projector files under `model_dir/logs/projector`.

    Writes `embeddings.tsv` (one embedding per row), `metadata.tsv` (its class
    name), `sprite.png` for image data and `projector_config.pbtxt` pointing at
    them; TensorBoard's projector tab shows them (`tensorboard --logdir
    MODEL_DIR/logs`). Plain text formats, so no TensorBoard install is needed
    to write them.

    Returns:
        The projector directory.
    """
    from PIL import Image

    directory = os.path.join(model_dir, PROJECTOR_DIR)
    os.makedirs(directory, exist_ok=True)
    embeddings = np.asarray(embeddings, np.float32)
    rows = "\n".join("\t".join(f"{v:.6g}" for v in row) for row in embeddings)
    write_text(os.path.join(directory, "embeddings.tsv"), rows + "\n")
    names = [class_names[int(label)].replace("\t", " ").replace("\n", " ") for label in labels]
    write_text(os.path.join(directory, "metadata.tsv"), "\n".join(names) + "\n")
    config = [
        "embeddings {",
        '  tensor_name: "held_out_embeddings"',
        '  tensor_path: "embeddings.tsv"',
        '  metadata_path: "metadata.tsv"',
    ]
    canvas = sprite(images) if images is not None else None
    if canvas is not None:
        with atomic_path(os.path.join(directory, "sprite.png")) as tmp:
            Image.fromarray(canvas).save(tmp, format="PNG")
        height, width = images.shape[1:3]
        config += [
            "  sprite {",
            '    image_path: "sprite.png"',
            f"    single_image_dim: {width}",
            f"    single_image_dim: {height}",
            "  }",
        ]
    config.append("}")
    write_text(os.path.join(directory, "projector_config.pbtxt"), "\n".join(config) + "\n")
    return directory
