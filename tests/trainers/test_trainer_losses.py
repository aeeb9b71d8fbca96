"""The trainer's registry of tfmetric losses and heads."""

import pytest

import tfmetric
from trainers import losses


def test_registry_holds_every_in_batch_loss_and_head():
    entries = losses.registry()
    classes = {e.cls for e in entries.values()}
    for name in tfmetric.losses.__all__:
        cls = getattr(tfmetric.losses, name)
        if isinstance(cls, type) and issubclass(cls, tfmetric.losses.batch.InBatchLoss):
            assert cls in classes, name
    for head in ("ArcFace", "CosFace", "SubCenterArcFace", "NormalizedSoftmax", "ProxyAnchor"):
        assert getattr(tfmetric.layers, head) in classes
    # Losses on explicit pairs/triplets and the heads' abstract base are not trainer losses.
    assert tfmetric.losses.TripletMarginLoss not in classes
    assert tfmetric.layers.ProxyHead not in classes
    assert entries["triplet"].cls is tfmetric.losses.TripletLoss
    assert entries["multi_similarity"].cls is tfmetric.losses.MultiSimilarityLoss
    assert entries["arc_face"].is_head and not entries["triplet"].is_head


@pytest.mark.parametrize(
    "name, cls",
    [
        ("arcface", "ArcFace"),
        ("ArcFace", "ArcFace"),
        ("multi-similarity", "MultiSimilarityLoss"),
        ("TripletLoss", "TripletLoss"),
        ("sub_center_arcface", "SubCenterArcFace"),
    ],
)
def test_lookup_ignores_case_and_separators(name, cls):
    assert losses.lookup(name).cls.__name__ == cls


def test_unknown_loss_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"Unknown `--loss` 'tripletz'.*'contrastive'.*'triplet'"):
        losses.lookup("tripletz")


def test_build_passes_the_arguments():
    entry, loss = losses.build("triplet", {"margin": 0.2, "mining": "hard"})
    assert isinstance(loss, tfmetric.losses.TripletLoss)
    assert (loss.margin, loss.mining) == (0.2, "hard")
    entry, head = losses.build("arcface", {"scale": 30.0, "margin": 0.3}, num_classes=7)
    assert entry.is_head
    config = head.get_config()
    assert (config["num_classes"], config["scale"], config["margin"]) == (7, 30.0, 0.3)


def test_build_rejects_an_argument_the_loss_does_not_take():
    with pytest.raises(ValueError, match=r"takes no argument temperature; its arguments are \[.*'margin'"):
        losses.build("triplet", {"temperature": 0.1})
    with pytest.raises(ValueError, match="mining"):
        losses.build("triplet", {"mining": "hardest"})


def test_parse_loss_args():
    assert losses.parse_loss_args(["alpha=2", "distance=cosine", "soft_margin=True"]) == {
        "alpha": 2,
        "distance": "cosine",
        "soft_margin": True,
    }
    with pytest.raises(ValueError, match="name=value"):
        losses.parse_loss_args(["alpha"])
