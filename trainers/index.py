r"""Similar items: embeds a catalogue into an item store and answers "more like this" queries.

    python -m trainers.index build --model=run/model.keras --catalogue=directory:shop/ \
        --store=shop.db
    python -m trainers.index query --model=run/model.keras --store=shop.db --item=shoes/12.jpg
    python -m trainers.index query --model=run/model.keras --store=shop.db --image=photo.jpg \
        --where=folder=shoes --k=5

`build` embeds every item of `--catalogue` with the embedder `--model` (a
`.keras` file, e.g. the `model.keras` that `python -m trainers.train` writes)
and upserts it, with its metadata, into the store in one transaction (re-running
it updates the store in place; an unreadable item leaves the store as it was). `query` finds the `--k` items nearest to a stored item
(`--item`), an image file (`--image`) or both, optionally only those whose
metadata field equals a value (`--where=field=value`, repeatable; `folder=1`
matches the number 1 or the text "1"), and prints
them with their metadata (`--json` for one JSON document).

Catalogues (`--catalogue`):

- `directory:PATH`: every JPEG/PNG image under PATH (sub-folders included);
  the id is the path relative to PATH, the metadata `{"path", "folder"}`;
- `digits`: scikit-learn's 8x8 digits; ids `0..1796`, metadata `{"class"}`;
- `npz:PATH`: inputs under `x` and optional labels under `y`; ids are row
  numbers, metadata `{"class"}`.

`--metadata=FILE.jsonl` adds fields: one JSON object per line with an `"id"`.

Stores (`--store`): a SQLite file path, or `redis://HOST:PORT[/DB]` with
`--namespace`. The store records the model version (`--model_version`,
default: a hash of the model file), so a store is never searched with the
embeddings of another model.
"""

import hashlib
import json
import os
import sys
from urllib.parse import urlparse

from absl import app, flags

FLAGS = flags.FLAGS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_BATCH = 256


def define_flags():
    """The command's flags (defined on demand: `trainers.train` has flags of the same names)."""
    flags.DEFINE_string("model", None, "The embedder, a .keras file.")
    flags.DEFINE_string("store", None, "A SQLite file path, or redis://HOST:PORT[/DB].")
    flags.DEFINE_string("namespace", "tfmetric", "Redis: prefix of the store's keys.")
    flags.DEFINE_string("model_version", None, "Version recorded with the embeddings (default: hash).")
    flags.DEFINE_string("catalogue", None, "build: directory:PATH | digits | npz:PATH.")
    flags.DEFINE_string("metadata", None, "build: JSON-lines file of extra metadata, with an `id`.")
    flags.DEFINE_string("distance", None, "build: distance of a new store (default euclidean).")
    flags.DEFINE_string("item", None, "query: id of a stored item.")
    flags.DEFINE_string("image", None, "query: an image file.")
    flags.DEFINE_integer("k", 5, "query: number of similar items.")
    flags.DEFINE_multi_string("where", [], "query: metadata filter field=value (repeatable).")
    flags.DEFINE_boolean("json", False, "query: print one JSON document.")


class InputError(ValueError):
    """Bad command-line input, reported without a traceback."""


def model_version_of(path):
    """The first 16 hex digits of the SHA-256 of the model file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_model(path):
    from tfmetric._src import files

    if not path or not os.path.isfile(path):
        raise InputError(f"`--model` {path!r} is not a file (a .keras embedder is needed).")
    try:
        return files.load_keras_file(path, "--model")
    except Exception as error:
        raise InputError(str(error)) from None


def open_store(spec, model_version, namespace="tfmetric", distance=None):
    """A store from `--store`: a SQLite path or `redis://HOST:PORT[/DB]`."""
    from tfmetric.index import ExactIndex
    from tfmetric.store import RedisStore, SQLiteStore

    if not spec:
        raise InputError("`--store` is required: a SQLite file path or redis://HOST:PORT.")
    index = None if distance is None else ExactIndex(distance)
    if spec.startswith("redis://"):
        url = urlparse(spec)
        db = int(url.path.strip("/") or 0)
        return RedisStore(
            url.hostname or "127.0.0.1", url.port or 6379, db, namespace, model_version, index
        )
    return SQLiteStore(spec, model_version=model_version, index=index)


def _image_input(model):
    shape = tuple(model.input_shape[1:])
    if len(shape) != 3 or shape[0] is None or shape[1] is None:
        raise InputError(
            f"`--model` takes inputs of shape {shape}; image queries need a fixed "
            "(height, width, channels) input."
        )
    return shape


def catalogue_batches(spec, model):
    """Yields `(ids, inputs, metadata)` batches of the catalogue `spec`."""
    from tfmetric.data import read_images

    if spec == "digits":
        from trainers.datasets import load_digits

        data = load_digits()
        for begin in range(0, len(data), _BATCH):
            labels = data.y[begin : begin + _BATCH]
            ids = list(range(begin, begin + len(labels)))
            yield ids, data.x[begin : begin + _BATCH], [{"class": int(v)} for v in labels]
    elif spec.startswith("npz:"):
        from trainers.datasets import load_npz

        try:
            data = load_npz(spec[4:])
        except ValueError as error:
            raise InputError(str(error)) from None
        for begin in range(0, len(data), _BATCH):
            labels = data.y[begin : begin + _BATCH]
            ids = list(range(begin, begin + len(labels)))
            meta = [{"class": data.class_names[int(v)]} for v in labels]
            yield ids, data.x[begin : begin + _BATCH], meta
    elif spec.startswith("directory:"):
        root = spec[len("directory:") :]
        if not os.path.isdir(root):
            raise InputError(f"`--catalogue` {spec!r}: no such folder.")
        files = sorted(
            os.path.relpath(os.path.join(folder, name), root)
            for folder, _, names in os.walk(root)
            for name in names
            if name.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise InputError(f"`--catalogue` {spec!r} holds no .jpg/.jpeg/.png image.")
        height, width, channels = _image_input(model)
        for begin in range(0, len(files), _BATCH):
            ids = [f.replace(os.sep, "/") for f in files[begin : begin + _BATCH]]
            paths = [os.path.join(root, f) for f in files[begin : begin + _BATCH]]
            try:
                images = read_images(paths, (height, width), channels)
            except ValueError as error:
                raise InputError(str(error)) from None
            meta = [{"path": i, "folder": i.split("/")[0] if "/" in i else ""} for i in ids]
            yield ids, images, meta
    else:
        raise InputError(
            f"`--catalogue` must be directory:PATH, digits or npz:PATH; got {spec!r}."
        )


def _read_extra_metadata(path):
    if path is None:
        return {}
    extra = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise InputError(f"{path}:{number}: not JSON ({error}).") from None
            if not isinstance(record, dict) or "id" not in record:
                raise InputError(f"{path}:{number}: expected a JSON object with an \"id\".")
            extra[json.dumps(record.pop("id"))] = record
    return extra


def _embed(model, inputs):
    import numpy as np

    return np.asarray(model(np.asarray(inputs, np.float32), training=False), np.float32)


def build(model_path, catalogue, store_spec, model_version=None, namespace="tfmetric",
          metadata_path=None, distance=None):
    """Embeds `catalogue` with the model and upserts it into the store; returns the item count."""
    import numpy as np

    model = load_model(model_path)
    version = model_version or model_version_of(model_path)
    extra = _read_extra_metadata(metadata_path)
    # The whole catalogue is read and embedded before the store is touched, then written in
    # one `upsert` (one transaction): an unreadable image or a model that does not fit the
    # catalogue leaves the store as it was, never half-built.
    all_ids, all_embeddings, all_meta = [], [], []
    for ids, inputs, meta in catalogue_batches(catalogue, model):
        all_ids.extend(ids)
        all_embeddings.append(_embed_catalogue(model, inputs, catalogue))
        all_meta.extend(dict(m, **extra.get(json.dumps(i), {})) for i, m in zip(ids, meta, strict=True))
    with open_store(store_spec, version, namespace, distance) as store:
        store.upsert(all_ids, np.concatenate(all_embeddings), metadata=all_meta)
        return len(store)


def _embed_catalogue(model, inputs, catalogue):
    """`_embed`, with a model that does not take the catalogue's inputs named as such."""
    try:
        expected = tuple(model.input_shape[1:])
    except (AttributeError, ValueError, TypeError):  # a subclassed model without an input
        return _embed(model, inputs)
    got = tuple(inputs.shape[1:])
    if len(expected) != len(got) or any(
        e not in (None, g) for e, g in zip(expected, got, strict=True)
    ):
        raise InputError(
            f"`--model` takes inputs of shape {expected}; the items of `--catalogue={catalogue}` "
            f"have shape {got}."
        )
    return _embed(model, inputs)


def _parse_where(pairs):
    """`{field: value}` of `--where`; a JSON value (`class=7`, `sale=true`) is parsed."""
    where = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field:
            raise InputError(f"`--where` must be field=value; got {pair!r}.")
        try:
            where[field] = json.loads(value)
        except ValueError:
            where[field] = value
    return where or None


def _where_filters(pairs):
    """The metadata filters `--where` may mean: `folder=1` matches the number or the text "1".

    The command line does not say whether `1` is a number or a folder named `1`
    (the `class` of an `npz:` catalogue and the `folder` of a `directory:` one
    are text), so a value that parses as JSON other than a string matches
    either form. Returns a list of `where` dicts (`[None]` without a filter).
    """
    import itertools

    where = _parse_where(pairs)
    if where is None:
        return [None]
    raw = dict(pair.partition("=")[::2] for pair in pairs)
    choices = [
        [(field, value)] + ([(field, raw[field])] if not isinstance(value, str) else [])
        for field, value in where.items()
    ]
    return [dict(combo) for combo in itertools.product(*choices)]


def _merged(store, lists, k):
    """The `k` closest matches of several filtered searches, each item once."""
    import numpy as np

    matches = {m.id: m for found in lists for m in found}
    values = list(matches.values())
    if not values:
        return []
    closeness = store.distance.to_dissimilarity(np.array([m.distance for m in values], np.float64))
    order = np.argsort(np.asarray(closeness), kind="stable")
    return [values[i] for i in order[:k]]


def _item_id(store, text):
    """`--item` as given, or as an int when the store holds that int id."""
    if text in store:
        return text
    try:
        number = int(text)
    except ValueError:
        number = None
    if number is not None and number in store:
        return number
    raise InputError(f"`--item` {text!r}: no such item in the store.")


def query(model_path, store_spec, item=None, image=None, k=5, where=(), model_version=None,
          namespace="tfmetric"):
    """The items similar to a stored item and/or an image: a list of result lists."""
    from tfmetric.data import read_images

    if item is None and image is None:
        raise InputError("Give `--item` (a stored item id) or `--image` (an image file).")
    filters = _where_filters(where)
    model = load_model(model_path) if image is not None else None
    version = model_version
    if version is None and model_path:
        if not os.path.isfile(model_path):
            raise InputError(f"`--model` {model_path!r} is not a file.")
        version = model_version_of(model_path)
    results = {}
    with open_store(store_spec, version, namespace) as store:
        if not len(store):
            raise InputError(f"The store {store_spec!r} is empty: run `build` first.")
        if item is not None:
            found = _item_id(store, item)
            results["item"] = _merged(
                store, [store.similar(found, k=k, where=w) for w in filters], k
            )
        if image is not None:
            height, width, channels = _image_input(model)
            try:
                pixels = read_images([image], (height, width), channels)
            except ValueError as error:
                raise InputError(f"`--image`: {error}") from None
            vector = _embed(model, pixels)
            results["image"] = _merged(
                store, [store.search(vector, k=k, where=w)[0] for w in filters], k
            )
    return results


def _print_results(results, as_json):
    if as_json:
        document = {
            what: [{"id": m.id, "distance": m.distance, "metadata": m.metadata} for m in matches]
            for what, matches in results.items()
        }
        print(json.dumps(document, indent=1))
        return
    for what, matches in results.items():
        print(f"Similar to the {what}:")
        print(f"{'rank':>4}  {'distance':>10}  {'id':<30}  metadata")
        for rank, match in enumerate(matches, 1):
            print(f"{rank:>4}  {match.distance:>10.4f}  {str(match.id):<30}  "
                  f"{json.dumps(match.metadata)}")


def check_flags(command, values):
    """Checks the flags of `command` before any work (no model loaded, no store opened).

    Args:
        command: `"build"` or `"query"`.
        values: `{flag name: value}`.

    Raises:
        InputError: naming the flag, for a missing or unreadable file, a
            malformed catalogue, store or filter, a flag the command does not
            use, or a value out of range.
    """
    model = values.get("model")
    if not model and (command == "build" or values.get("image") is not None):
        raise InputError(f"`--model` is required for `{command}`: the .keras embedder.")
    if model and not os.path.isfile(model):
        raise InputError(f"`--model` {model!r} is not a file (a .keras embedder is needed).")
    store = values.get("store")
    if not store:
        raise InputError("`--store` is required: a SQLite file path or redis://HOST:PORT.")
    if store.startswith("redis://"):
        url = urlparse(store)
        try:
            url.port  # noqa: B018 (raises on a port that is not a number in range)
            int(url.path.strip("/") or 0)
        except ValueError:
            raise InputError(
                f"`--store` {store!r} must be redis://HOST:PORT[/DB] (integer port and DB)."
            ) from None
    else:
        parent = os.path.dirname(os.path.abspath(store))
        if os.path.isdir(store) or not os.path.isdir(parent):
            raise InputError(f"`--store` {store!r} must be a SQLite file in an existing folder.")
        if command == "query" and not os.path.isfile(store):
            raise InputError(f"`--store` {store!r} does not exist: run `build` first.")
    used = {
        "build": ("catalogue", "metadata", "distance"),
        "query": ("item", "image", "k", "where", "json"),
    }
    defaults = {"k": 5, "where": [], "json": False}
    other = "query" if command == "build" else "build"
    for name in used[other]:
        if values.get(name) not in (None, defaults.get(name)):
            raise InputError(f"`--{name}` is a flag of `{other}`, not of `{command}`.")
    if command == "build":
        catalogue = values.get("catalogue")
        if not catalogue:
            raise InputError("`--catalogue` is required for build.")
        kind, _, path = catalogue.partition(":")
        if catalogue != "digits" and kind not in ("directory", "npz"):
            raise InputError(
                f"`--catalogue` must be directory:PATH, digits or npz:PATH; got {catalogue!r}."
            )
        if kind == "directory" and not os.path.isdir(path):
            raise InputError(f"`--catalogue` {catalogue!r}: no such folder.")
        if kind == "npz" and not os.path.isfile(path):
            raise InputError(f"`--catalogue` {catalogue!r}: no such file.")
        metadata = values.get("metadata")
        if metadata is not None and not os.path.isfile(metadata):
            raise InputError(f"`--metadata` {metadata!r} does not exist.")
        if values.get("distance") is not None:
            from tfmetric import distances

            try:
                distances.get(values["distance"])
            except ValueError as error:
                raise InputError(f"`--distance`: {error}") from None
    else:
        k = values.get("k", 5)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"`--k` must be an integer >= 1; got {k!r}.")
        if values.get("item") is None and values.get("image") is None:
            raise InputError("Give `--item` (a stored item id) or `--image` (an image file).")
        image = values.get("image")
        if image is not None and not os.path.isfile(image):
            raise InputError(f"`--image` {image!r} does not exist.")
        _parse_where(values.get("where") or [])


def main(argv):
    commands = argv[1:]
    if len(commands) != 1 or commands[0] not in ("build", "query"):
        print("usage: python -m trainers.index build|query --flags (see --help)", file=sys.stderr)
        return 2
    try:
        names = ("model", "store", "catalogue", "metadata", "distance", "item", "image", "k",
                 "where", "json")  # fmt: skip
        check_flags(commands[0], {name: FLAGS[name].value for name in names})
        if commands[0] == "build":
            count = build(FLAGS.model, FLAGS.catalogue, FLAGS.store, FLAGS.model_version,
                          FLAGS.namespace, FLAGS.metadata, FLAGS.distance)
            print(f"The store {FLAGS.store} holds {count} items.")
        else:
            results = query(FLAGS.model, FLAGS.store, FLAGS.item, FLAGS.image, FLAGS.k,
                            FLAGS.where, FLAGS.model_version, FLAGS.namespace)
            _print_results(results, FLAGS.json)
    except (ValueError, KeyError, TypeError, ConnectionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
