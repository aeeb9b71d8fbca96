"""SavedModel of an export plan, with image decoding, exact retrieval and verification in the graph.

The SavedModel holds the embedder (and, for a Siamese model, its head) but no
loss or optimizer, and plain TensorFlow ops, so `tf.saved_model.load` and TF
Serving use it without tfmetric. Signatures (those the plan lists):

- `serving_default`: `inputs` (float, `(batch, ...)`) → `embeddings` `(batch, dim)`;
- `embed_images` (image models): `images` (a `(batch,)` string tensor of encoded
  JPEG/PNG/GIF/BMP) → `embeddings`, decoding, resizing and scaling in the graph;
- `retrieve` (with a gallery): `inputs` → `ids`, `distances`, `indices` (row
  numbers in the gallery) and `labels` (when the gallery has labels) of the
  `top_k` nearest gallery items, nearest first (exact search); with a
  gallery `match_threshold`, also `match` (the nearest item's label, or the
  unknown label beyond the threshold) and `matched` (bool), per query;
- `retrieve_images` (image models with a gallery): the same from encoded images;
- `verify` (Siamese models, or on request): `x1`, `x2` → `score` `(batch,)`
  and `is_match` (bool) at the calibrated threshold;
- `verify_images` (image models): the same from `images1`, `images2`.
"""

import json
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfmetric import distances as distances_lib
from tfmetric._src import files, topk, validation
from tfmetric._src.autograph import as_written

__all__ = ["METADATA_FILENAME", "exact_search", "save_embedder", "write_saved_model"]

METADATA_FILENAME = "tfmetric_export.json"


class _ExportModule(tf.Module):
    """The tracked state of the export: the embedder, the gallery, the verification model."""

    def __init__(self, plan, metadata_path):
        super().__init__(name="tfmetric_export")
        self.embedder = plan.embedder
        gallery = plan.gallery
        if gallery is not None:
            embeddings = gallery.embeddings
            if plan.l2_normalize:
                norms = np.sqrt(np.maximum(np.sum(embeddings**2, axis=1, keepdims=True), 1e-12))
                embeddings = embeddings / norms
            self.gallery_embeddings = tf.Variable(embeddings, trainable=False)
            self.gallery_ids = tf.Variable(gallery.ids, trainable=False)
            if gallery.labels is not None:
                self.gallery_labels = tf.Variable(gallery.labels, trainable=False)
        layer = getattr(plan.distance, "layer", None)
        if isinstance(layer, keras.layers.Layer):
            self.distance_layer = layer  # A learned distance: its weights are saved.
        if plan.verify is not None and plan.verify.siamese is not None:
            self.siamese = plan.verify.siamese
        self.metadata = tf.saved_model.Asset(metadata_path)


@as_written
def exact_search(queries, gallery, distance, k):
    """Top-`k` gallery rows for each query: `(distances, indices)`, nearest first.

    Exact brute-force search in float32 (`tfmetric._src.topk`, the search of
    `tfmetric.index.ExactIndex`, traced to plain TensorFlow ops); with a
    similarity (`inner_product`) the returned values are similarities, largest
    first. Ties keep the lower gallery row first.
    """
    values, indices = topk.top_k_blocks(
        queries, gallery[None], lambda q, block, _: distance.closeness(q, block), k
    )
    return distance.from_closeness(values), indices


def _decoder(image_spec):
    size = (image_spec.height, image_spec.width)
    shape = (image_spec.height, image_spec.width, image_spec.channels)

    def decode(data):
        image = tf.io.decode_image(data, channels=image_spec.channels, expand_animations=False)
        image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")
        return tf.ensure_shape(image, shape)

    def decode_batch(images):
        pixels = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec(shape, tf.float32))
        return image_spec.preprocess(pixels)

    return decode_batch


def _build_signatures(module, plan):
    """Returns the `{name: concrete function}` of every signature the plan lists."""
    input_dtype = tf.as_dtype(plan.input_dtype)
    decode = None if plan.image_spec is None else _decoder(plan.image_spec)

    def from_images(images):
        return tf.cast(decode(images), input_dtype)

    def embed(inputs):
        return {"embeddings": plan.embed(inputs)}

    def retrieve(inputs):
        gallery = tf.convert_to_tensor(module.gallery_embeddings)
        values, indices = exact_search(plan.embed(inputs), gallery, plan.distance, plan.top_k)
        outputs = {
            "ids": tf.gather(module.gallery_ids, indices),
            "distances": values,
            "indices": indices,
        }
        if hasattr(module, "gallery_labels"):
            outputs["labels"] = tf.gather(module.gallery_labels, indices)
        threshold = plan.gallery.match_threshold
        if threshold is not None:
            nearest = values[:, 0]
            close = plan.distance.to_closeness(nearest) >= plan.distance.to_closeness(threshold)
            unknown = tf.constant(plan.gallery.unknown_label, outputs["labels"].dtype)
            outputs["match"] = tf.where(close, outputs["labels"][:, 0], unknown)
            outputs["matched"] = close
        return outputs

    def verify(x1, x2):
        score = plan.verify.score(x1, x2)
        return {"score": score, "is_match": plan.verify.decide(score)}

    inputs_spec = tf.TensorSpec((None, *plan.input_shape), input_dtype)
    images_spec = tf.TensorSpec((None,), tf.string)
    functions = {}
    for signature in plan.signatures:
        names = signature.input_names()
        spec = images_spec if signature.images else inputs_spec
        task = {"embed": embed, "retrieve": retrieve, "verify": verify}[signature.task]
        specs = [tf.TensorSpec(spec.shape, spec.dtype, name=n) for n in names]
        if len(names) == 1:

            def single(x, task=task, images=signature.images):
                return task(from_images(x) if images else x)

            fn = tf.function(single, input_signature=specs, autograph=False)
        else:

            def pair(x1, x2, task=task, images=signature.images):
                if images:
                    x1, x2 = from_images(x1), from_images(x2)
                return task(x1, x2)

            fn = tf.function(pair, input_signature=specs, autograph=False)
        functions[signature.name] = fn.get_concrete_function()
    return functions


def write_saved_model(plan, path):
    """Writes the SavedModel of an `ExportPlan` to `path` (with its metadata).

    Returns:
        The metadata written as `assets/tfmetric_export.json`.
    """
    validation.check_tensorflow_backend("Exporting a SavedModel")
    metadata = plan.metadata()
    with tempfile.TemporaryDirectory() as scratch:
        metadata_path = os.path.join(scratch, METADATA_FILENAME)
        with open(metadata_path, "w") as f:
            json.dump(metadata, f, indent=2, sort_keys=True)
        module = _ExportModule(plan, metadata_path)
        signatures = _build_signatures(module, plan)
        tf.saved_model.save(module, os.fspath(path), signatures=signatures)
    return metadata


def save_embedder(
    path,
    embedder,
    input_shape=None,
    image_spec=None,
    gallery=None,
    distance="cosine",
    top_k=10,
    l2_normalize=False,
):
    """Writes a SavedModel of `embedder` to `path` and returns its signature names.

    Lower-level than `tfmetric.export.export_for_serving` (no versioning, no
    warm-up, no TFLite, no parity): use it to place a SavedModel yourself. Like
    every export, it never replaces what is there: the SavedModel is written
    into a temporary directory beside `path` and renamed to `path` when
    complete, so an interrupted call leaves no partial SavedModel.

    Args:
        path: Directory to write: absent or empty (a SavedModel or any other
            file already there is refused with a `ValueError`).
        embedder: Keras model mapping one float input to `(batch, dim)`.
        input_shape: The input shape without the batch; must be the
            embedder's (its default).
        image_spec: A `tfmetric.export.ImageSpec` to add `embed_images`, or
            `None`.
        gallery: A `tfmetric.export.Gallery` (or dict, or `.npz` path) to add
            `retrieve`, or `None`.
        distance: Distance of `retrieve` (name, config or instance). Defaults
            to `"cosine"`.
        top_k: Number of gallery items `retrieve` returns (capped at the
            gallery size). Defaults to `10`.
        l2_normalize: Whether the signatures L2-normalise the embeddings (the
            gallery embeddings are then normalised too). Defaults to `False`.

    Returns:
        The list of signature names.

    Raises:
        ValueError: if `path` is a file or a non-empty directory (a
            SavedModel already there is never overwritten), or cannot be
            created.

    Example:

    >>> import keras, os, tempfile
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> path = os.path.join(tempfile.mkdtemp(), "embedder")
    >>> tfmetric.export.save_embedder(path, model)
    ['serving_default']
    """
    from tfmetric.export.plan import plan_export

    validation.check_tensorflow_backend("`tfmetric.export.save_embedder`")
    path = os.fspath(path)
    if os.path.isdir(path) and os.listdir(path):
        what = "a SavedModel" if os.path.exists(os.path.join(path, "saved_model.pb")) else "files"
        raise ValueError(
            f"`path` {path!r} already holds {what}; give an absent or empty directory (a "
            "SavedModel is never overwritten)."
        )
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"`path` {path!r} exists and is not a directory.")
    problem = files.directory_problem(path)
    if problem is not None:
        raise ValueError(f"`path` {path!r} cannot be written: {problem}.")

    if input_shape is not None:
        shape = tuple(embedder.inputs[0].shape[1:])
        if tuple(input_shape) != shape:
            raise ValueError(f"`input_shape` {tuple(input_shape)} is not the embedder's {shape}.")
    plan = plan_export(
        embedder,
        image_spec=False if image_spec is None else image_spec,
        gallery=gallery,
        distance=distances_lib.get(distance),
        top_k=top_k,
        l2_normalize=l2_normalize,
        verify=False,
    )
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    scratch = files.make_temporary_directory(parent)
    try:
        write_saved_model(plan, scratch)
        files.publish_directory(scratch, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return plan.signature_names
