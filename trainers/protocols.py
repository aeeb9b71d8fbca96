"""The main job's application protocols: LFW-style pair verification and person re-identification.

- `pairs`: `--dataset=directory:PATH` is a folder of one sub-folder per
  identity (LFW's layout) and `--pairs_file` a pairs file in LFW's format
  (`tfmetric.metrics.read_pairs_file`). The identities named in the pairs
  file are held out: the model trains on the others, and is scored on the
  pairs with k folds, each fold's threshold chosen on the other folds
  (`tfmetric.metrics.k_fold_verification`).
- `reid`: `--dataset=reid:ROOT` is a Market-1501-style root with
  `bounding_box_train`, `bounding_box_test` and `query` folders
  (`tfmetric.data.reid_folder` names). The model trains on
  `bounding_box_train` (junk and distractors left out) and is scored with
  camera-aware CMC and mAP of `query` against `bounding_box_test`
  (`tfmetric.metrics.reid_scores`).
"""

import os
from typing import NamedTuple

import numpy as np

from trainers import datasets

REID_FOLDERS = ("bounding_box_train", "bounding_box_test", "query")
_PAIR_EXTENSIONS = ("jpg", "jpeg", "png")


class PairRows(NamedTuple):
    """The pairs of a pairs file as rows of the held-out `Data`."""

    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    fold: np.ndarray


class ReidSplit(NamedTuple):
    """Query and gallery images with identities (`-1` junk, `0` distractor) and cameras."""

    query: datasets.Data
    query_ids: np.ndarray
    query_cameras: np.ndarray
    gallery: datasets.Data
    gallery_ids: np.ndarray
    gallery_cameras: np.ndarray


def _directory_paths(root):
    """The image paths of `datasets.load_directory(root)`, in its row order."""
    classes = sorted(
        d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )
    return [
        os.path.normpath(os.path.join(root, name, file))
        for name in classes
        for file in sorted(os.listdir(os.path.join(root, name)))
        if file.lower().endswith(datasets.IMAGE_EXTENSIONS)
    ]


def _read_pairs(pairs_file, root):
    from tfmetric.metrics import read_pairs_file

    pairs = read_pairs_file(pairs_file, root, check_images=False)
    for extension in _PAIR_EXTENSIONS:
        stem = os.path.splitext(pairs.first[0])[0]
        if os.path.isfile(f"{stem}.{extension}"):
            return read_pairs_file(pairs_file, root, extension=extension)
    return read_pairs_file(pairs_file, root)  # raises, naming the missing images


def pairs_split(data, root, pairs_file):
    """Splits a `directory:` dataset for the pairs protocol.

    Returns:
        `(train, test, pair_rows)`: the identities not named in the pairs
        file train; `test` holds the named ones; `pair_rows` index `test`.

    Raises:
        ValueError: for a malformed pairs file, images it names that are
            missing, or too few training identities.
    """
    if not pairs_file:
        raise ValueError("`--protocol=pairs` needs `--pairs_file` (LFW's pairs.txt format).")
    pairs = _read_pairs(pairs_file, root)
    position = {path: row for row, path in enumerate(_directory_paths(root))}
    first = np.array([position[os.path.normpath(p)] for p in pairs.first])
    second = np.array([position[os.path.normpath(p)] for p in pairs.second])
    named = {data.class_names[data.y[row]] for row in np.concatenate([first, second])}
    held_out = np.array([data.class_names[label] in named for label in data.y])
    train = data.subset(np.flatnonzero(~held_out))
    test = data.subset(np.flatnonzero(held_out))
    counts = np.bincount(train.y, minlength=len(data.class_names))
    if np.sum(counts >= 2) < 2:
        raise ValueError(
            "`--protocol=pairs`: the identities not named in `--pairs_file` must include at least "
            f"2 with 2 images or more to train on; got {int(np.sum(counts >= 2))}."
        )
    in_test = -np.ones(len(data), np.int64)
    in_test[np.flatnonzero(held_out)] = np.arange(int(held_out.sum()))
    return train, test, PairRows(in_test[first], in_test[second], pairs.same, pairs.fold)


def evaluate_pairs(test_embeddings, pair_rows, distance):
    """The pairs protocol's scores (`tfmetric.metrics.k_fold_verification`)."""
    from tfmetric.metrics import k_fold_verification

    return k_fold_verification(
        test_embeddings[pair_rows.first], test_embeddings[pair_rows.second], pair_rows.same,
        pair_rows.fold, distance,
    )  # fmt: skip


def _load_images(paths, image_size):
    from PIL import Image

    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
        except OSError as error:
            raise ValueError(f"Cannot read image {path}: {error}") from None
        images.append(array)
    return datasets._resize_uint8(images, image_size)


def load_reid(root, image_size):
    """Reads a Market-1501-style root: `(train, test, reid_split)`.

    `train` is `bounding_box_train` without junk and distractors; `test` the
    query and gallery images of real identities (for the job's generic
    retrieval metrics); `reid_split` the full query and gallery.

    Raises:
        ValueError: for a missing folder or badly named images.
    """
    from tfmetric.data import reid_folder

    missing = [f for f in REID_FOLDERS if not os.path.isdir(os.path.join(root, f))]
    if missing:
        raise ValueError(
            f"`--dataset=reid:{root}` must hold the folders {list(REID_FOLDERS)}; missing {missing}."
        )
    parts = {}
    for folder in REID_FOLDERS:
        source = reid_folder(os.path.join(root, folder), validate=False)
        paths = [p.decode() for p in np.asarray(source.x)]
        parts[folder] = (_load_images(paths, image_size), source.labels, source.cameras)
    x, ids, _ = parts["bounding_box_train"]
    keep = ids > 0
    if len(np.unique(ids[keep])) < 2:
        raise ValueError(f"`--dataset=reid:{root}`: bounding_box_train needs 2 identities or more.")
    y, names = datasets._relabel(ids[keep])
    train = datasets.Data(x[keep], y, names, f"reid:{root}")
    qx, q_ids, q_cams = parts["query"]
    gx, g_ids, g_cams = parts["bounding_box_test"]
    real = g_ids > 0
    test_x = np.concatenate([qx, gx[real]])
    test_y, test_names = datasets._relabel(np.concatenate([q_ids, g_ids[real]]))
    test = datasets.Data(test_x, test_y, test_names, f"reid:{root}")
    split = ReidSplit(
        datasets.Data(qx, np.zeros(len(qx), np.int32), ["query"], "query"), q_ids, q_cams,
        datasets.Data(gx, np.zeros(len(gx), np.int32), ["gallery"], "gallery"), g_ids, g_cams,
    )  # fmt: skip
    return train, test, split


def evaluate_reid(embed, split, distance):
    """The re-ID protocol's scores: CMC at ranks 1, 5, 10 and mAP (`reid_scores`)."""
    from tfmetric.metrics import reid_scores

    scores = reid_scores(
        (embed(split.query.x), split.query_ids, split.query_cameras),
        (embed(split.gallery.x), split.gallery_ids, split.gallery_cameras),
        distance=distance,
        max_rank=10,
    )
    return {
        "cmc_rank_1": float(scores["cmc"][0]),
        "cmc_rank_5": float(scores["cmc"][min(4, len(scores["cmc"]) - 1)]),
        "cmc_rank_10": float(scores["cmc"][-1]),
        "mean_average_precision": scores["mean_average_precision"],
        "queries": scores["num_queries"],
        "queries_without_match": scores["num_skipped"],
    }


def load_and_split(config):
    """`(data, train, test, evaluate)` for the run's protocol.

    `evaluate(embed, test_embeddings, distance)` returns the protocol's own
    scores (`None` for `samples` and `classes`, whose scores are the job's
    held-out retrieval metrics); `data.class_names` names the labels of
    `test` (string identities included).
    """
    kind, argument = datasets.check_spec(config.dataset)
    if config.protocol == "reid":
        train, test, split = load_reid(argument, config.image_size)

        def evaluate(embed, test_embeddings, distance):
            return evaluate_reid(embed, split, distance)

        return test, train, test, evaluate
    data = datasets.load(
        config.dataset, config.image_size, config.tfrecord_image_key, config.tfrecord_label_key,
        config.tfds_split, config.tfds_data_dir,
    )  # fmt: skip
    if config.protocol == "pairs":
        train, test, rows = pairs_split(data, argument, config.pairs_file)

        def evaluate(embed, test_embeddings, distance):
            return evaluate_pairs(test_embeddings, rows, distance)

        return data, train, test, evaluate
    train, test = datasets.split(data, config.protocol, config.resolved_train_fraction, config.seed)
    return data, train, test, None
