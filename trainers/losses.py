"""Every tfmetric loss and head by name, built with the arguments it accepts.

The registry is discovered from the packages, not written by hand: every
`keras.losses.Loss` class exported by `tfmetric.losses` is a *loss* (trained on
`(labels, embeddings)` batches), every layer exported by `tfmetric.layers` whose
constructor takes `num_classes` is a *head* (class proxies trained with the
model, e.g. ArcFace). Names are the class names in snake case without the
`Loss` suffix (`TripletLoss` -> `triplet`, `MultiSimilarityLoss` ->
`multi_similarity`, `ArcFace` -> `arc_face`); matching ignores case, `_` and
`-`, so `arcface` and `multi-similarity` work too.
"""

import ast
import dataclasses
import inspect
import re


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    cls: type
    is_head: bool

    def parameters(self):
        return {
            name: p
            for name, p in inspect.signature(self.cls).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }


def _snake(class_name):
    name = class_name[:-4] if class_name.endswith("Loss") and class_name != "Loss" else class_name
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return name.lower()


def _key(name):
    return re.sub(r"[-_\s]", "", str(name).lower())


def _exported(module):
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    return [getattr(module, n) for n in names if inspect.isclass(getattr(module, n, None))]


def registry():
    """Returns `{name: Entry}` for every in-batch loss and head tfmetric exports.

    Losses are the `tfmetric.losses.batch.InBatchLoss` classes (the losses on
    explicit pairs or triplets need other models). Heads are the layers taking
    `num_classes`, except bare base classes (the parent of other heads with no
    argument of its own, like `ProxyHead`).
    """
    import keras

    import tfmetric.layers
    import tfmetric.losses
    from tfmetric.losses.batch import InBatchLoss

    entries = {}
    for cls in _exported(tfmetric.losses):
        if issubclass(cls, InBatchLoss) and cls is not InBatchLoss:
            entries[_snake(cls.__name__)] = Entry(_snake(cls.__name__), cls, False)
    heads = [
        Entry(_snake(cls.__name__), cls, True)
        for cls in _exported(tfmetric.layers)
        if issubclass(cls, keras.layers.Layer) and "num_classes" in inspect.signature(cls).parameters
    ]
    for head in heads:
        is_base = any(o.cls is not head.cls and issubclass(o.cls, head.cls) for o in heads)
        if not (is_base and set(head.parameters()) == {"num_classes"}):
            entries[head.name] = head
    return dict(sorted(entries.items()))


def lookup(name):
    """Returns the registry `Entry` of a loss or head name.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    entries = registry()
    by_key = {_key(n): e for n, e in entries.items()}
    by_key.update({_key(e.cls.__name__): e for e in entries.values()})
    if _key(name) not in by_key:
        raise ValueError(f"Unknown `--loss` {name!r}; expected one of {sorted(entries)}.")
    return by_key[_key(name)]


def parse_loss_args(pairs):
    """Parses `["key=value", ...]` (values as Python literals, else strings)."""
    args = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"`--loss_arg` must look like `name=value`; got {pair!r}.")
        try:
            args[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            args[key.strip()] = value.strip()
    return args


def check_arguments(name, args):
    """Checks a loss (name or `Entry`) and its argument names against its signature (builds nothing).

    Returns:
        The registry `Entry`.

    Raises:
        ValueError: for an unknown name or an argument the class does not
            take (listing those it takes).
    """
    entry = name if isinstance(name, Entry) else lookup(name)
    accepted = sorted(
        p for p in entry.parameters() if p not in ("name", "reduction", "dtype", "num_classes")
    )
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(
            f"`--loss={entry.name}` ({entry.cls.__name__}) takes no argument "
            f"{', '.join(unknown)}; its arguments are {accepted}."
        )
    return entry


def build(name, args, num_classes=None):
    """Builds the loss or head `name` with the arguments it accepts.

    Args:
        name: A registry name (see `registry()`) or an `Entry`.
        args: `{argument: value}` the user set (e.g. from `--margin`); every one
            must be an argument of the chosen class.
        num_classes: Number of training classes, passed to heads.

    Returns:
        `(entry, instance)`.

    Raises:
        ValueError: for an unknown name or an argument the class does not
            take (listing those it takes).
    """
    import keras

    entry = check_arguments(name, args)
    kwargs = dict(args)
    if entry.cls is keras.losses.BinaryCrossentropy:
        kwargs.setdefault("name", "binary_crossentropy")
    if entry.is_head:
        kwargs["num_classes"] = int(num_classes)
    try:
        return entry, entry.cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`--loss={entry.name}`: {error}") from None
