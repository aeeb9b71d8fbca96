"""The pair-verification protocol of Labeled Faces in the Wild: pairs files, k folds.

A pairs file lists image pairs that show the same identity ("matched") or not
("mismatched"), split into folds. The protocol reports the accuracy of a
"same / not same" threshold chosen, for each fold, on the *other* folds (so
the threshold never sees the pairs it is tested on): mean ± standard
deviation over the folds; and the threshold-free ROC AUC, equal error rate and
TAR@FAR over all pairs.

Reference:
    Huang, Ramesh, Berg, Learned-Miller. "Labeled Faces in the Wild: A
    Database for Studying Face Recognition in Unconstrained Environments".
    University of Massachusetts, Amherst, Technical Report 07-49, 2007.
"""

import os
from typing import NamedTuple

import numpy as np

from tfmetric import distances as distances_lib
from tfmetric.metrics.verification import (
    _prepare,
    best_threshold,
    equal_error_rate,
    far_values,
    paired_distances,
    roc_auc,
    tar_at_far,
)


class Pairs(NamedTuple):
    """The pairs of a pairs file (numpy arrays of shape `(pairs,)`).

    Attributes:
        first: Path of the first image of each pair.
        second: Path of the second image.
        same: Whether the two images show the same identity.
        fold: The fold of each pair, `0 .. folds - 1`.
    """

    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    fold: np.ndarray


def read_pairs_file(pairs_file, image_folder, extension="jpg", check_images=True):
    """Reads a pairs file in LFW's format.

    The first line gives the number of folds and of matched (and mismatched)
    pairs per fold, `10\\t300` for LFW's `pairs.txt`, or only the number of
    pairs of each kind for a single fold (`pairsDevTrain.txt`). Each fold then
    lists its matched pairs, `name\\tn1\\tn2`, and its mismatched pairs,
    `name1\\tn1\\tname2\\tn2`. Image `n` of `name` is
    `image_folder/name/name_{n:04d}.{extension}`.

    Args:
        pairs_file: Path of the pairs file.
        image_folder: Folder holding one sub-folder per identity.
        extension: Image file extension. Defaults to `"jpg"`.
        check_images: Raise if an image named by the file is missing.
            Defaults to `True`.

    Returns:
        A `Pairs`.

    Raises:
        ValueError: for a malformed file (naming the line) or, with
            `check_images`, images that do not exist (listing them).

    Example:

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "pairs.txt"), "w") as f:
    ...     _ = f.write("1\\t1\\nAda\\t1\\t2\\nAda\\t1\\tBob\\t1\\n")
    >>> pairs = tfmetric.metrics.read_pairs_file(
    ...     os.path.join(folder, "pairs.txt"), folder, check_images=False)
    >>> [os.path.relpath(p, folder) for p in pairs.second], pairs.same.tolist()
    (['Ada/Ada_0002.jpg', 'Bob/Bob_0001.jpg'], [True, False])
    """
    pairs_file, image_folder = os.fspath(pairs_file), os.fspath(image_folder)
    if not os.path.isfile(pairs_file):
        raise ValueError(f"`pairs_file` {pairs_file!r} does not exist.")
    if not os.path.isdir(image_folder):
        raise ValueError(f"`image_folder` {image_folder!r} does not exist or is not a folder.")
    try:
        with open(pairs_file, encoding="utf-8") as handle:
            lines = [(n, line.split()) for n, line in enumerate(handle, 1) if line.strip()]
    except UnicodeDecodeError as error:
        raise ValueError(
            f"`pairs_file` {pairs_file!r} is not a text pairs file (byte {error.start} is not "
            "UTF-8)."
        ) from None
    if not lines:
        raise ValueError(f"`pairs_file` {pairs_file!r} is empty.")
    header = lines[0][1]
    try:
        counts = [int(v) for v in header]
    except ValueError:
        counts = []
    if len(counts) not in (1, 2) or min(counts) < 1:
        raise ValueError(
            f"{pairs_file}:1: expected a header `folds<TAB>pairs` or `pairs`; got {header!r}."
        )
    folds, per_kind = (1, counts[0]) if len(counts) == 1 else counts
    body = lines[1:]
    expected_lines = folds * 2 * per_kind
    if len(body) != expected_lines:
        where = (
            f"line {body[expected_lines][0]} is one too many"
            if len(body) > expected_lines
            else f"the file ends after line {lines[-1][0]}"
        )
        raise ValueError(
            f"{pairs_file}: the header announces {folds} fold(s) of {per_kind} matched and "
            f"{per_kind} mismatched pairs ({expected_lines} lines); found {len(body)} ({where})."
        )

    def path(name, number, line_number):
        if name in (".", "..") or any(sep in name for sep in ("/", "\\", os.sep)):
            raise ValueError(
                f"{pairs_file}:{line_number}: identity {name!r} is not a folder name (it holds "
                "a path separator or is '.' / '..')."
            )
        try:
            value = int(number)
        except ValueError:
            value = None
        if value is None or value < 1:
            raise ValueError(
                f"{pairs_file}:{line_number}: image number {number!r} is not an integer >= 1."
            )
        return os.path.join(image_folder, name, f"{name}_{value:04d}.{extension}")

    first, second, same, fold = [], [], [], []
    for position, (number, fields) in enumerate(body):
        matched = (position % (2 * per_kind)) < per_kind
        expected = 3 if matched else 4
        if len(fields) != expected:
            kind = "matched `name n1 n2`" if matched else "mismatched `name1 n1 name2 n2`"
            raise ValueError(f"{pairs_file}:{number}: expected a {kind} pair; got {fields!r}.")
        if matched:
            first.append(path(fields[0], fields[1], number))
            second.append(path(fields[0], fields[2], number))
        else:
            first.append(path(fields[0], fields[1], number))
            second.append(path(fields[2], fields[3], number))
        same.append(matched)
        fold.append(position // (2 * per_kind))
    if check_images:
        missing = sorted({p for p in first + second if not os.path.isfile(p)})
        if missing:
            shown = ", ".join(repr(p) for p in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise ValueError(
                f"`pairs_file` names {len(missing)} image(s) missing from `image_folder`: "
                f"{shown}{more}."
            )
    return Pairs(np.array(first), np.array(second), np.array(same), np.array(fold, np.int64))


def k_fold_verification(x, y, same, folds=10, distance="euclidean", far=(1e-3, 1e-2)):
    """Verification accuracy with a threshold chosen on the other folds (LFW protocol).

    For each fold, `tfmetric.metrics.best_threshold` (accuracy) is computed
    on the pairs of all other folds and applied to the fold's pairs. ROC AUC,
    EER and TAR@FAR are computed on all pairs at once.

    Args:
        x: Embeddings of the first images, shape `(pairs, d)`.
        y: Embeddings of the second images, shape `(pairs, d)`.
        same: Booleans (or 0/1), shape `(pairs,)`.
        folds: The fold of each pair, integers of shape `(pairs,)` (e.g.
            `Pairs.fold`), or a number `k >= 2` of folds of consecutive pairs
            (as in LFW's file). Defaults to `10`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.
        far: False accept rates for `tar_at_far`: a real number in `[0, 1]`
            (Python or numpy) or a sequence of them. Defaults to `(1e-3, 1e-2)`.

    Returns:
        A dict: `accuracy` and `accuracy_std` (mean and population standard
        deviation over the folds), `fold_accuracies` and `fold_thresholds`
        (lists), `roc_auc`, `equal_error_rate` and `tar_at_far_{far}`.

    Raises:
        ValueError: for fewer than two folds, a fold without pairs, or
            training folds without both kinds of pairs.

    Example:

    >>> x = np.zeros((4, 1))
    >>> y = np.array([[0.1], [0.9], [0.2], [0.8]])
    >>> scores = tfmetric.metrics.k_fold_verification(x, y, [1, 0, 1, 0], folds=2, far=(0.5,))
    >>> scores["fold_thresholds"]  # fold 0's threshold comes from fold 1's pairs
    [0.2, 0.1]
    >>> scores["fold_accuracies"]  # at 0.1, fold 1's same pair (0.2) is rejected
    [1.0, 0.5]
    """
    distance = distances_lib.get(distance)
    far = far_values(far)
    # Closeness scores (larger means "same") serve distances and similarities alike.
    scores = distance.to_closeness(paired_distances(x, y, distance).astype(np.float64))
    same, _ = _prepare(same, scores, True)
    n = len(same)
    if isinstance(folds, (int, np.integer)) and not isinstance(folds, bool):
        if not 2 <= folds <= n:
            raise ValueError(f"`folds` must be between 2 and the number of pairs {n}; got {folds}.")
        fold = np.arange(n) * int(folds) // n
    else:
        fold = np.asarray(folds)
        if fold.shape != (n,) or not np.issubdtype(fold.dtype, np.integer):
            raise ValueError(
                f"`folds` must be a number of folds or one integer fold per pair, shape ({n},); "
                f"got {folds!r}."
            )
    names = np.unique(fold)
    if len(names) < 2:
        raise ValueError("`folds` must define at least two folds.")
    accuracies, thresholds = [], []
    for name in names:
        test = fold == name
        train_same, train_scores = same[~test], scores[~test]
        if train_same.all() or not train_same.any():
            raise ValueError(
                f"The folds other than fold {name} hold only one kind of pair; a threshold "
                "needs both same and different pairs."
            )
        threshold, _ = best_threshold(train_same, train_scores, "accuracy", True)
        accuracies.append(float(np.mean((scores[test] >= threshold) == same[test])))
        thresholds.append(float(distance.from_closeness(threshold)))
    results = {
        "accuracy": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "fold_accuracies": accuracies,
        "fold_thresholds": thresholds,
        "roc_auc": roc_auc(same, scores, True),
        "equal_error_rate": equal_error_rate(same, scores, True),
    }
    for value in far:
        results[f"tar_at_far_{value:g}"] = tar_at_far(same, scores, value, True)
    return results


def evaluate_pairs_file(
    embed, pairs_file, image_folder, extension="jpg", distance="euclidean", far=(1e-3, 1e-2)
):
    """The LFW protocol end to end: reads a pairs file, embeds its images, scores the folds.

    Args:
        embed: A function from a list of image paths to their embeddings,
            an array `(len(paths), d)` — e.g. `lambda paths:
            model.predict(tfmetric.data.read_images(paths, (112, 112)))`.
            Each distinct image is embedded once.
        pairs_file: Path of the pairs file (see `read_pairs_file`).
        image_folder: Folder of one sub-folder per identity.
        extension: Image file extension. Defaults to `"jpg"`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.
        far: False accept rates for `tar_at_far`: a real number in `[0, 1]`
            (Python or numpy) or a sequence of them. Defaults to `(1e-3, 1e-2)`.

    Returns:
        The dict of `k_fold_verification`, with the folds of the file.

    Raises:
        ValueError: for a malformed pairs file, missing images, or `embed`
            returning the wrong number of rows.
    """
    pairs = read_pairs_file(pairs_file, image_folder, extension)
    paths, inverse = np.unique(np.concatenate([pairs.first, pairs.second]), return_inverse=True)
    embeddings = np.asarray(embed(list(paths)))
    if embeddings.ndim != 2 or embeddings.shape[0] != len(paths):
        raise ValueError(
            f"`embed` must return one embedding per path, shape ({len(paths)}, d); got "
            f"{embeddings.shape}."
        )
    n = len(pairs.same)
    return k_fold_verification(
        embeddings[inverse[:n]], embeddings[inverse[n:]], pairs.same, pairs.fold, distance, far
    )
