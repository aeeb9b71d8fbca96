"""LFW's pair-verification protocol: pairs files and k folds, against brute-force references."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfmetric.data import read_images
from tfmetric.metrics import (
    evaluate_pairs_file,
    k_fold_verification,
    read_pairs_file,
    roc_auc,
)


def _reference(scores, same, fold, similarity=False):
    """For each fold: the threshold with the best accuracy on the other folds, brute force."""
    oriented = -scores if similarity else scores  # smaller means "same"
    accuracies, thresholds = [], []
    for f in np.unique(fold):
        train = fold != f
        best = None
        for t in np.concatenate([[-np.inf], np.sort(oriented[train])]):
            accuracy = np.mean((oriented[train] <= t) == same[train])
            if best is None or accuracy > best[0]:  # ties: the first, smallest threshold
                best = (accuracy, t)
        thresholds.append(-best[1] if similarity else best[1])
        accuracies.append(np.mean((oriented[~train] <= best[1]) == same[~train]))
    return np.array(accuracies), np.array(thresholds)


def test_hand_computed_three_folds():
    # Distances of 9 pairs, 3 folds of 3.
    d = np.array([0.1, 0.5, 0.4, 0.2, 0.9, 0.3, 0.6, 0.7, 0.35])
    same = np.array([1, 1, 0, 1, 0, 0, 1, 0, 1], bool)
    # Fold 0 trains on 0.2 s, 0.9 d, 0.3 d, 0.6 s, 0.7 d, 0.35 s: t = 0.2 -> 4/6, t = 0.35 ->
    # 4/6, t = 0.6 -> 5/6 (only 0.3 wrong), t = 0.7 -> 4/6. Best 0.6.
    # Fold 0 at 0.6: 0.1 same ok, 0.5 same ok, 0.4 accepted (wrong) -> 2/3.
    x = np.zeros((9, 1))
    y = d[:, None]
    scores = k_fold_verification(x, y, same, folds=3, far=(0.5,))
    np.testing.assert_allclose(scores["fold_thresholds"][0], 0.6, rtol=1e-6)
    np.testing.assert_allclose(scores["fold_accuracies"][0], 2 / 3)
    accuracies, thresholds = _reference(d.astype(np.float32).astype(np.float64), same,
                                        np.arange(9) // 3)
    np.testing.assert_allclose(scores["fold_accuracies"], accuracies)
    np.testing.assert_allclose(scores["fold_thresholds"], thresholds, rtol=1e-6)
    np.testing.assert_allclose(scores["accuracy"], accuracies.mean())
    np.testing.assert_allclose(scores["accuracy_std"], accuracies.std())
    assert scores["roc_auc"] == roc_auc(same, d)


@pytest.mark.parametrize("distance", ["euclidean", "inner_product"])
def test_random_folds_match_reference(distance):
    rng = np.random.default_rng(0)
    same = rng.random(60) < 0.5
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = np.where(same[:, None], x + 0.8 * rng.normal(size=(60, 4)), rng.normal(size=(60, 4)))
    fold = rng.integers(0, 5, 60)
    scores = k_fold_verification(x, y, same, folds=fold, distance=distance)
    xd, yd = x.astype(np.float64), y.astype(np.float32).astype(np.float64)
    raw = np.sqrt(((xd - yd) ** 2).sum(1)) if distance == "euclidean" else (xd * yd).sum(1)
    accuracies, thresholds = _reference(raw, same, fold, distance == "inner_product")
    np.testing.assert_allclose(scores["fold_accuracies"], accuracies)
    np.testing.assert_allclose(scores["fold_thresholds"], thresholds, rtol=1e-4)


def test_bad_folds_are_explained():
    x, y, same = np.zeros((4, 1)), np.ones((4, 1)), [1, 0, 1, 0]
    with pytest.raises(ValueError, match="`folds` must be between 2"):
        k_fold_verification(x, y, same, folds=1)
    with pytest.raises(ValueError, match="at least two folds"):
        k_fold_verification(x, y, same, folds=[0, 0, 0, 0])
    with pytest.raises(ValueError, match="one kind of pair"):
        k_fold_verification(x, y, same, folds=[0, 1, 0, 0])
    with pytest.raises(ValueError, match="one integer fold per pair"):
        k_fold_verification(x, y, same, folds=[0, 1])


def _lfw_like(root, missing=()):
    """Identities with one grey level each; a pairs file of 2 folds × 2 pairs per kind."""
    levels = {"Ada_Lovelace": 20, "Bob": 120, "Cy": 220}
    for name, level in levels.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for number in (1, 2, 3):
            if (name, number) in missing:
                continue
            image = np.full((6, 6, 3), level + 5 * number, np.uint8)
            path = os.path.join(root, name, f"{name}_{number:04d}.png")
            tf.io.write_file(path, tf.io.encode_png(image))
    lines = [
        "2\t2",
        "Ada_Lovelace\t1\t2", "Bob\t1\t3",
        "Ada_Lovelace\t1\tBob\t1", "Bob\t2\tCy\t2",
        "Cy\t1\t3", "Bob\t2\t3",
        "Cy\t1\tAda_Lovelace\t3", "Ada_Lovelace\t2\tCy\t3",
    ]
    path = os.path.join(root, "pairs.txt")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def test_read_pairs_file(tmp_path):
    path = _lfw_like(str(tmp_path))
    pairs = read_pairs_file(path, tmp_path, extension="png")
    assert pairs.same.tolist() == [True, True, False, False] * 2
    assert pairs.fold.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert os.path.relpath(pairs.first[3], tmp_path) == os.path.join("Bob", "Bob_0002.png")
    assert os.path.relpath(pairs.second[3], tmp_path) == os.path.join("Cy", "Cy_0002.png")
    assert os.path.relpath(pairs.second[0], tmp_path) == os.path.join(
        "Ada_Lovelace", "Ada_Lovelace_0002.png"
    )


def test_evaluate_pairs_file_end_to_end(tmp_path):
    path = _lfw_like(str(tmp_path))
    calls = []

    def embed(paths):
        calls.append(len(paths))
        return read_images(paths, (6, 6)).mean(axis=(1, 2))

    scores = evaluate_pairs_file(embed, path, tmp_path, extension="png", far=(0.5,))
    assert calls == [len(set(read_pairs_file(path, tmp_path, "png").first)
                         | set(read_pairs_file(path, tmp_path, "png").second))]
    # Same identity: grey levels 5 to 10 apart per channel; different: >= 100 apart.
    assert scores["accuracy"] == 1.0 and scores["roc_auc"] == 1.0
    assert scores["equal_error_rate"] == 0.0 and len(scores["fold_accuracies"]) == 2


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda lines: ["x\ty"] + lines[1:], "expected a header"),
        (lambda lines: lines[:-1], "found 7"),
        (lambda lines: lines[:1] + ["Ada_Lovelace\t1"] + lines[2:], ":2: expected a matched"),
        (lambda lines: lines[:1] + ["Ada_Lovelace\tone\t2"] + lines[2:], ":2: image number 'one'"),
        (lambda lines: lines[:1] + ["Ada_Lovelace\t0\t2"] + lines[2:], ":2: image number '0'"),
        (lambda lines: lines[:2] + ["Bob\t-3\t2"] + lines[3:], ":3: image number '-3'"),
        (lambda lines: lines[:1] + ["../Ada\t1\t2"] + lines[2:], ":2: identity '../Ada'"),
        (lambda lines: lines[:3] + ["..\t1\tCy\t2"] + lines[4:], ":4: identity '..'"),
        (lambda lines: lines + ["Cy\t1\t2"], r"found 9 \(line 10 is one too many\)"),
        (lambda lines: lines[:-1], r"found 7 \(the file ends after line 8\)"),
    ],
)
def test_malformed_pairs_file_names_the_line(tmp_path, edit, message):
    path = _lfw_like(str(tmp_path))
    with open(path) as handle:
        lines = handle.read().splitlines()
    with open(path, "w") as handle:
        handle.write("\n".join(edit(lines)) + "\n")
    with pytest.raises(ValueError, match=message):
        read_pairs_file(path, tmp_path, extension="png")


def test_missing_images_are_listed(tmp_path):
    path = _lfw_like(str(tmp_path), missing={("Cy", 3)})
    with pytest.raises(ValueError, match=r"1 image\(s\) missing.*Cy_0003.png"):
        read_pairs_file(path, tmp_path, extension="png")
    with pytest.raises(ValueError, match="does not exist"):
        read_pairs_file(tmp_path / "nope.txt", tmp_path)
