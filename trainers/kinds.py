"""The four model kinds of the main job (`--model_kind`).

- `embedding`: the embedder trained on class-balanced P×K batches with an
  in-batch loss (`tfmetric.losses.TripletLoss`, `MultiSimilarityLoss`, ...).
- `proxy`: the embedder with a proxy head (`ArcFace`, `ProxyAnchor`, ...) in a
  `tfmetric.models.ProxyModel`, on the same batches.
- `siamese`: a `tfmetric.models.SiameseModel` on labelled pairs
  (`tfmetric.data.pair_dataset`): the distance of the two embeddings with
  `tfmetric.losses.PairContrastiveLoss` (`--pair_scorer=distance`), or Koch et
  al.'s learned weighted L1 head with binary cross-entropy
  (`--pair_scorer=weighted_l1`).
- `triplet`: a `tfmetric.models.TripletModel` on explicit triplets
  (`tfmetric.data.triplet_dataset`) with `tfmetric.losses.TripletMarginLoss`:
  random triplets, or mined offline (`--mining=easy|semi-hard|hard`), or a
  curriculum of mining modes by epoch (`--curriculum=0:easy,3:semi-hard`).

Without `--model_kind`, a head (`--loss=arcface`) means `proxy` and any other
loss `embedding`.
"""

from trainers import losses
from trainers.config import KINDS, PAIR_SCORERS, TRIPLET_MINING

__all__ = ["KINDS", "PAIR_SCORERS", "TRIPLET_MINING", "loss_entry", "parse_curriculum",
           "resolve_kind"]  # fmt: skip

DEFAULT_LOSS = {"embedding": "triplet", "proxy": "arc_face"}
# The loss each twin network trains with; `--loss` may name it or be left out.
TWIN_LOSSES = {
    ("siamese", "distance"): ("pair_contrastive", "tfmetric.losses", "PairContrastiveLoss"),
    ("siamese", "weighted_l1"): ("binary_crossentropy", "keras.losses", "BinaryCrossentropy"),
    ("triplet", None): ("triplet_margin", "tfmetric.losses", "TripletMarginLoss"),
}


def resolve_kind(model_kind, loss):
    """The model kind: `model_kind`, or from the loss (a head means `proxy`)."""
    if model_kind is not None:
        return model_kind
    if loss is None:
        return "embedding"
    return "proxy" if losses.lookup(loss).is_head else "embedding"


def _twin_key(kind, pair_scorer):
    return (kind, pair_scorer if kind == "siamese" else None)


def loss_entry(kind, loss, pair_scorer="distance"):
    """The registry `Entry` of the loss a kind trains with.

    Raises:
        ValueError: a loss that does not fit the kind (a head outside `proxy`,
            an in-batch loss for `proxy`, any other loss than the twin
            network's own for `siamese` / `triplet`), naming the valid ones.
    """
    import importlib

    if kind in ("siamese", "triplet"):
        name, module, cls_name = TWIN_LOSSES[_twin_key(kind, pair_scorer)]
        if loss is not None and losses._key(loss) not in (losses._key(name), losses._key(cls_name)):
            head = f" --pair_scorer={pair_scorer}" if kind == "siamese" else ""
            raise ValueError(
                f"`--model_kind={kind}`{head} trains with `--loss={name}`; got `--loss={loss}`."
            )
        return losses.Entry(name, getattr(importlib.import_module(module), cls_name), False)
    entry = losses.lookup(loss or DEFAULT_LOSS[kind])
    if kind == "proxy" and not entry.is_head:
        raise ValueError(
            f"`--model_kind=proxy` needs a head as `--loss` (e.g. arc_face, proxy_anchor); "
            f"`{entry.name}` is an in-batch loss: use --model_kind=embedding."
        )
    if kind == "embedding" and entry.is_head:
        raise ValueError(
            f"`--loss={entry.name}` is a proxy head: use --model_kind=proxy (or leave "
            "--model_kind out)."
        )
    return entry


def loss_arguments(kind, args):
    """The settings that go to the loss of `kind` (the others go to the model or the data)."""
    args = dict(args)
    if kind == "siamese":
        args.pop("distance", None)  # the Siamese model's distance
    if kind == "triplet":
        args.pop("mining", None)  # offline mining of the triplet dataset
    return args


def parse_curriculum(text, kind):
    """`"0:easy,3:semi-hard,6:hard"` -> `{0: "easy", 3: "semi-hard", 6: "hard"}`.

    Raises:
        ValueError: a malformed schedule, one without epoch 0, a mode the kind
            cannot mine with, or a kind without mining.
    """
    if text is None:
        return None
    if kind not in ("embedding", "triplet"):
        raise ValueError(
            f"`--curriculum` schedules mining, which `--model_kind={kind}` does not do; use it "
            "with --model_kind=embedding (in-batch mining) or triplet (offline mining)."
        )
    schedule = {}
    for part in str(text).split(","):
        epoch, sep, mode = part.strip().partition(":")
        if not sep or not epoch.strip().isdigit() or not mode.strip():
            raise ValueError(
                f"`--curriculum` must look like `0:easy,3:semi-hard,6:hard` (first epoch:mining "
                f"mode); got {text!r}."
            )
        schedule[int(epoch)] = mode.strip()
    if 0 not in schedule:
        raise ValueError(f"`--curriculum` must start at epoch 0; got {text!r}.")
    valid = TRIPLET_MINING if kind == "triplet" else _in_batch_mining_modes()
    bad = sorted({m for m in schedule.values() if m not in valid})
    if bad:
        raise ValueError(f"`--curriculum` modes {bad} are not among {list(valid)} for "
                         f"--model_kind={kind}.")  # fmt: skip
    return dict(sorted(schedule.items()))


def _in_batch_mining_modes():
    from tfmetric.losses import triplet

    return tuple(triplet.MINING_MODES)
