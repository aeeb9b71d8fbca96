"""Reports, plots and projector files of the trainer."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from trainers import evaluation, outputs


@pytest.fixture
def clusters():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    embeddings = rng.normal(size=(40, 6)) * 0.1 + np.eye(6)[labels] * 3
    images = rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    return embeddings.astype(np.float32), labels, images


def _png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_plots_are_readable_pngs(tmp_path, clusters):
    embeddings, labels, images = clusters
    names = ["a", "b", "c", "d"]
    outputs.plot_training_curves({"loss": [3.0, 2.0, 1.0], "val_map_at_r": [0.5, 0.7, 0.8]},
                                 tmp_path / "curves.png")
    outputs.plot_projection(embeddings, labels, names, tmp_path / "proj.png", method="tsne")
    numbers, roc = evaluation.evaluate(embeddings, labels)
    outputs.plot_roc({"model": (*roc, numbers["roc_auc"])}, tmp_path / "roc.png")
    neighbors = evaluation.nearest_neighbors(embeddings, 5)
    outputs.plot_neighbors(images, labels, names, neighbors, tmp_path / "nn.png")
    for name in ("curves.png", "proj.png", "roc.png", "nn.png"):
        width, height = _png(tmp_path / name)
        assert width > 100 and height > 100
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_evaluate_separated_clusters_is_perfect(clusters):
    embeddings, labels, _ = clusters
    numbers, _ = evaluation.evaluate(embeddings, labels)
    for key in ("precision_at_1", "map_at_r", "r_precision", "roc_auc"):
        assert numbers[key] == pytest.approx(1.0)
    assert numbers["eer"] == pytest.approx(0.0)
    assert numbers["verification_pairs"] == 40 * 39 // 2


def test_evaluate_against_a_hand_computed_case():
    # 1-D points: labels 0 at 0 and 1, label 1 at 0.4 and 3. Leave-one-out:
    # query 0 (0.0): nearest 0.4 (wrong) -> P@1 0; R=1, MAP@R 0.
    # query 1 (1.0): nearest 0.4 (wrong) -> 0.  query 2 (0.4): nearest 0 (wrong) -> 0.
    # query 3 (3.0): nearest 1.0 (wrong) -> 0. Pairs: same (0,1) d=1, (2,3) d=2.6;
    # different d = 0.4, 3, 0.6, 2: AUC = P(d_same < d_diff) = (2 + 1) / 8.
    x = np.array([[0.0], [1.0], [0.4], [3.0]], np.float32)
    numbers, _ = evaluation.evaluate(x, np.array([0, 0, 1, 1]))
    assert numbers["precision_at_1"] == 0.0 and numbers["map_at_r"] == 0.0
    assert numbers["roc_auc"] == pytest.approx(3 / 8)


def test_nearest_neighbors_excludes_the_query():
    x = np.array([[0.0], [1.0], [5.0], [5.5]], np.float32)
    np.testing.assert_array_equal(evaluation.nearest_neighbors(x, 2), [[1, 2], [0, 2], [3, 1], [2, 1]])


def test_verification_pairs_all_or_sampled():
    i, j = evaluation.verification_pairs(np.zeros(5))
    assert len(i) == 10 and np.all(i < j)
    i, j = evaluation.verification_pairs(np.zeros(1000), max_pairs=500, seed=1)
    assert len(i) == 500 and np.all(i < j)


def test_projector_files(tmp_path, clusters):
    embeddings, labels, images = clusters
    directory = outputs.write_projector(str(tmp_path), embeddings, labels, list("abcd"), images)
    rows = (tmp_path / "logs/projector/embeddings.tsv").read_text().splitlines()
    assert len(rows) == 40 and len(rows[0].split("\t")) == 6
    np.testing.assert_allclose(np.array([r.split("\t") for r in rows], float), embeddings, atol=1e-5)
    metadata = (tmp_path / "logs/projector/metadata.tsv").read_text().splitlines()
    assert metadata[:11] == ["a"] * 10 + ["b"]
    assert _png(os.path.join(directory, "sprite.png")) == (7 * 8, 7 * 8)
    config = (tmp_path / "logs/projector/projector_config.pbtxt").read_text()
    assert 'tensor_path: "embeddings.tsv"' in config and "single_image_dim: 8" in config


def test_report_table_and_atomic_json(tmp_path):
    model = {"precision_at_1": 0.99, "map_at_r": 0.975, "r_precision": 0.98, "roc_auc": 0.999,
             "eer": 0.01}
    base = {"precision_at_1": 0.98, "map_at_r": 0.55, "r_precision": 0.6, "roc_auc": 0.9,
            "eer": 0.2}
    report = {"dataset": "digits", "protocol": "samples",
              "split": {"test_samples": 539, "test_classes": 10},
              "held_out": {"model": model, "raw_input_baseline": base}}
    table = outputs.format_table(report)
    assert "MAP@R                     0.9750     0.5500" in table
    outputs.write_json(tmp_path / "r.json", report)
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert os.listdir(tmp_path) == ["r.json"]


def test_sample_pairs_half_same_never_self():
    labels = np.repeat(np.arange(5), 7)
    i, j, same = evaluation.sample_pairs(labels, count=1000, seed=3)
    assert len(i) == 1000 and same.sum() == 500
    assert np.all(i != j)
    np.testing.assert_array_equal(labels[i] == labels[j], same)
    again = evaluation.sample_pairs(labels, count=1000, seed=3)
    np.testing.assert_array_equal(again[0], i)


def test_pair_verification_hand_computed():
    # Distances: same pairs 0.1, 0.2; different pairs 0.3, 0.05. AUC = P(d_same < d_diff):
    # (0.1 < 0.3) + (0.2 < 0.3) of 4 comparisons = 0.5. Thresholds: "same" when d <= 0.2 gets
    # 3 of 4 right (only the 0.05 pair wrong); 0.05 gets 1, 0.1 gets 2, 0.3 (all "same") 2.
    numbers = evaluation.pair_verification([0.1, 0.2, 0.3, 0.05], [1, 1, 0, 0], False)
    assert numbers["pair_roc_auc"] == pytest.approx(0.5)
    assert numbers["threshold"] == pytest.approx(0.2)
    assert numbers["pairs"] == 4
    separable = evaluation.pair_verification(np.r_[np.zeros(50), np.ones(50)],
                                             np.r_[np.ones(50), np.zeros(50)], False)  # fmt: skip
    assert separable["pair_roc_auc"] == 1.0 and separable["pair_eer"] == 0.0
    assert separable["tar_at_far_1e-3"] == 1.0 and separable["pair_accuracy"] == 1.0
    # Similarities: larger = same.
    flipped = evaluation.pair_verification(np.r_[np.ones(50), np.zeros(50)],
                                           np.r_[np.ones(50), np.zeros(50)], True)  # fmt: skip
    assert flipped["pair_roc_auc"] == 1.0 and flipped["pair_accuracy"] == 1.0


def test_few_shot_on_separated_clusters(clusters):
    embeddings, labels, _ = clusters  # 4 classes: too few for 5-way episodes
    assert evaluation.few_shot(embeddings, labels, episodes=10) == {"5_way_1_shot": None,
                                                                   "5_way_5_shot": None}  # fmt: skip
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(6), 8)
    x = np.eye(6)[y] * 5 + rng.normal(size=(48, 6)) * 0.05
    assert evaluation.few_shot(x, y, episodes=20) == {"5_way_1_shot": 1.0, "5_way_5_shot": 1.0}


def test_report_is_strict_json(tmp_path):
    """A -inf fold threshold (the pairs protocol) is `null`, not `-Infinity`, in report.json."""
    report = {"pairs": {"fold_thresholds": [float("-inf"), 0.25], "roc_auc": float("nan")},
              "held_out": {"model": {"threshold": float("inf"), "eer": 0.5}}, "steps": 3}
    path = tmp_path / "report.json"
    outputs.write_report(path, report)

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    stored = json.loads(path.read_text(), parse_constant=refuse)
    assert stored == {"pairs": {"fold_thresholds": [None, 0.25], "roc_auc": None},
                      "held_out": {"model": {"threshold": None, "eer": 0.5}}, "steps": 3}
    assert report["pairs"]["fold_thresholds"][0] == float("-inf")  # the caller's dict is kept
