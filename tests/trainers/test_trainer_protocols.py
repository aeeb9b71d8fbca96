"""The main job's pairs (LFW) and re-ID (Market-1501) protocols, on folders the tests write."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import trainers
from trainers import datasets, protocols

TINY = dict(classes_per_batch=3, samples_per_class=2, embedding_dim=8, image_size=8, epochs=1,
            steps_per_epoch=2, export=False)  # fmt: skip


def _image(path, level, seed):
    rng = np.random.default_rng(seed)
    pixels = np.clip(level + rng.normal(0, 8, (12, 12, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def lfw(tmp_path_factory):
    """Seven identities of 4 images; the pairs file (2 folds x 2 + 2) names three of them."""
    root = tmp_path_factory.mktemp("lfw")
    people = ["Ada_L", "Bob", "Cy", "Di", "Ed", "Flo", "Gus"]
    for k, name in enumerate(people):
        os.makedirs(root / "faces" / name)
        for n in range(1, 5):
            _image(root / "faces" / name / f"{name}_{n:04d}.jpg", 30 * k, k * 10 + n)
    lines = ["2\t2", "Ada_L\t1\t2", "Bob\t1\t3", "Ada_L\t1\tBob\t1", "Bob\t2\tCy\t2",
             "Cy\t1\t3", "Bob\t2\t4", "Cy\t1\tAda_L\t3", "Ada_L\t2\tCy\t3"]  # fmt: skip
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return str(root / "faces"), str(root / "pairs.txt")


def test_pairs_split_holds_out_the_named_identities(lfw):
    folder, pairs_file = lfw
    data = datasets.load_directory(folder, 8)
    train, test, rows = protocols.pairs_split(data, folder, pairs_file)
    assert sorted({test.class_names[y] for y in test.y}) == ["Ada_L", "Bob", "Cy"]
    assert sorted({train.class_names[y] for y in train.y}) == ["Di", "Ed", "Flo", "Gus"]
    # Pair 4 (fold 0, mismatched) is Bob_0002 against Cy_0002: rows of `test` in load order.
    assert test.class_names[test.y[rows.first[3]]] == "Bob"
    assert test.class_names[test.y[rows.second[3]]] == "Cy"
    np.testing.assert_array_equal(test.x[rows.first[3]], data.x[4 + 1])
    assert rows.same.tolist() == [True, True, False, False] * 2
    assert rows.fold.tolist() == [0] * 4 + [1] * 4


@pytest.mark.slow
def test_pairs_protocol_run(lfw, tmp_path):
    folder, pairs_file = lfw
    report = trainers.run(trainers.RunConfig(
        dataset=f"directory:{folder}", protocol="pairs", pairs_file=pairs_file,
        model_dir=str(tmp_path / "run"), **TINY,
    ))  # fmt: skip
    scores = report["pairs"]
    assert len(scores["fold_accuracies"]) == 2 and 0.0 <= scores["accuracy"] <= 1.0
    assert report["split"]["test_classes"] == 3 and report["split"]["train_classes"] == 4
    assert report["class_names"] == ["Ada_L", "Bob", "Cy", "Di", "Ed", "Flo", "Gus"]
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["pairs"] == scores


def _market(root):
    """Train ids 1-4; test ids 5-7 seen by cameras 1 and 2, a junk and a distractor image."""
    for folder in protocols.REID_FOLDERS:
        os.makedirs(root / folder)
    for pid in range(1, 5):
        for cam in (1, 2):
            _image(root / "bounding_box_train" / f"{pid:04d}_c{cam}s1_00{pid}{cam}01_00.jpg",
                   40 * pid, pid * 10 + cam)  # fmt: skip
    for pid in (5, 6, 7):
        _image(root / "query" / f"{pid:04d}_c1s1_00{pid}101_00.jpg", 30 * pid, pid)
        for cam in (1, 2):
            _image(root / "bounding_box_test" / f"{pid:04d}_c{cam}s1_00{pid}{cam}02_00.jpg",
                   30 * pid, pid * 10 + cam)  # fmt: skip
    _image(root / "bounding_box_test" / "-1_c2s1_000001_00.jpg", 150, 99)
    _image(root / "bounding_box_test" / "0000_c3s1_000002_00.jpg", 10, 98)


@pytest.mark.slow
def test_reid_protocol_run(tmp_path):
    _market(tmp_path / "market")
    report = trainers.run(trainers.RunConfig(
        dataset=f"reid:{tmp_path / 'market'}", protocol="reid", model_dir=str(tmp_path / "run"),
        **TINY,
    ))  # fmt: skip
    scores = report["reid"]
    assert scores["queries"] == 3 and scores["queries_without_match"] == 0
    assert 0.0 <= scores["cmc_rank_1"] <= scores["cmc_rank_5"] <= scores["cmc_rank_10"] <= 1.0
    assert report["split"]["train_classes"] == 4 and report["split"]["test_samples"] == 9


def test_reid_loader_reads_the_three_folders(tmp_path):
    _market(tmp_path / "market")
    train, test, split = protocols.load_reid(str(tmp_path / "market"), 8)
    assert len(train) == 8 and train.x.shape == (8, 8, 8, 3)
    assert split.query_ids.tolist() == [5, 6, 7] and split.query_cameras.tolist() == [1, 1, 1]
    assert sorted(split.gallery_ids.tolist()) == [-1, 0, 5, 5, 6, 6, 7, 7]
    assert len(test) == 9  # the queries and the six real gallery images


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(protocol="reid"), "`--protocol=reid` goes with `--dataset=reid:ROOT`"),
        (dict(dataset="reid:/nowhere"), "`--protocol=reid` goes with"),
        (dict(protocol="pairs", dataset="directory:/x"), "`--pairs_file`"),
        (dict(pairs_file="pairs.txt"), "read by `--protocol=pairs` only"),
    ],
)
def test_bad_protocol_settings_are_explained(settings, message):
    with pytest.raises(ValueError, match=message):
        trainers.RunConfig(**settings)


def test_missing_pairs_images_fail_before_training(lfw, tmp_path):
    folder, pairs_file = lfw
    bad = tmp_path / "pairs.txt"
    bad.write_text(open(pairs_file).read().replace("Cy\t1\t3", "Cy\t1\t9"))
    data = datasets.load_directory(folder, 8)
    with pytest.raises(ValueError, match=r"missing.*Cy_0009"):
        protocols.pairs_split(data, folder, str(bad))
    with pytest.raises(ValueError, match="must hold the folders"):
        protocols.load_reid(str(tmp_path), 8)
