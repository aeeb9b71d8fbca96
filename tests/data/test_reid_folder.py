"""Market-1501-style folders: identities and cameras from file names; re-ID scoring on them."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfmetric.data import class_balanced_dataset, read_images, reid_folder
from tfmetric.metrics import reid_scores


def _write(folder, name, value):
    image = np.full((16, 8, 3), value, np.uint8)
    tf.io.write_file(os.path.join(folder, name), tf.io.encode_png(image))


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """Query and gallery folders; each identity has its own grey level."""
    root = tmp_path_factory.mktemp("market")
    query, gallery = root / "query", root / "bounding_box_test"
    query.mkdir()
    gallery.mkdir()
    for pid in (1, 2, 3):
        _write(query, f"{pid:04d}_c1s1_000{pid}01_00.png", 60 * pid)
        _write(gallery, f"{pid:04d}_c1s1_000{pid}02_00.png", 60 * pid)  # same camera: excluded
        _write(gallery, f"{pid:04d}_c2s1_000{pid}03_00.png", 60 * pid + 4)
    _write(gallery, "0000_c3s1_000001_00.png", 62)  # distractor, near identity 1
    _write(gallery, "-1_c2s1_000002_00.png", 120)  # junk, equal to identity 2
    (gallery / "Thumbs.db").write_bytes(b"not an image")
    return str(query), str(gallery)


def test_names_give_identities_and_cameras(market):
    source = reid_folder(market[1], image_size=(16, 8))
    names = [os.path.basename(p.decode()) for p in np.asarray(source.x)]
    assert names[0] == "-1_c2s1_000002_00.png" and len(names) == 8
    assert source.labels.tolist() == [-1, 0, 1, 1, 2, 2, 3, 3]
    assert source.cameras.tolist() == [2, 3, 1, 2, 1, 2, 1, 2]
    train = reid_folder(market[1], image_size=(16, 8), drop_junk=True)
    assert train.labels.tolist() == [1, 1, 2, 2, 3, 3]
    assert train.cameras.tolist() == [1, 2, 1, 2, 1, 2]
    images, labels = next(iter(class_balanced_dataset(train, None, 2, 2, seed=0)))
    assert images.shape == (4, 16, 8, 3)
    np.testing.assert_allclose(images.numpy().mean(axis=(1, 2, 3)) // 60, labels.numpy(), atol=0)


def test_reid_scores_on_the_folder(market):
    query, gallery = (reid_folder(f, image_size=(16, 8)) for f in market)

    def embed(source):
        paths = [p.decode() for p in np.asarray(source.x)]
        return read_images(paths, (16, 8)).mean(axis=(1, 2))  # the grey level

    scores = reid_scores(
        (embed(query), query.labels, query.cameras),
        (embed(gallery), gallery.labels, gallery.cameras),
        max_rank=3,
    )
    # Identity 1 (grey 60): the distractor (62) is nearer than its other-camera image (64).
    # Identity 2 (120): the same-camera copy and the junk image (120) are excluded.
    np.testing.assert_allclose(scores["cmc"], [2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(scores["mean_average_precision"], (0.5 + 1 + 1) / 3)
    assert scores["num_queries"] == 3 and scores["num_skipped"] == 0


def test_bad_folders_are_explained(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        reid_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="no .jpg"):
        reid_folder(tmp_path)
    _write(tmp_path, "holiday.png", 10)
    with pytest.raises(ValueError, match=r"holiday.png"):
        reid_folder(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        read_images([str(tmp_path / "missing.png")])
