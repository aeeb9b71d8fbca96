"""SavedModel of an embedder, with image decoding and exact retrieval in the graph.

The SavedModel holds the embedder only (no loss, head or optimizer) and plain
TensorFlow ops, so `tf.saved_model.load` and TF Serving use it without tfmetric.
Signatures:

- `serving_default`: `inputs` (float, `(batch, ...)`) → `embeddings` `(batch, dim)`;
- `embed_images` (image models): `images` (a `(batch,)` string tensor of encoded
  JPEG/PNG/GIF/BMP) → `embeddings`, decoding, resizing and scaling in the graph;
- `retrieve` (with a gallery): `inputs` → `ids`, `distances`, `indices` (row
  numbers in the gallery) and `labels` (when the gallery has labels) of the
  `top_k` nearest gallery items, nearest first (exact search);
- `retrieve_images` (image models with a gallery): the same from encoded images.
"""

import json
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfmetric import distances as distances_lib

__all__ = ["METADATA_FILENAME", "exact_search", "save_embedder"]

METADATA_FILENAME = "tfmetric_export.json"


class _EmbedderModule(tf.Module):
    """The tracked state of the export: the embedder and the gallery."""

    def __init__(self, embedder, gallery, metadata_path, l2_normalize):
        super().__init__(name="tfmetric_export")
        self.embedder = embedder
        if gallery is not None:
            embeddings = gallery.embeddings
            if l2_normalize:
                norms = np.sqrt(np.maximum(np.sum(embeddings**2, axis=1, keepdims=True), 1e-12))
                embeddings = embeddings / norms
            self.gallery_embeddings = tf.Variable(embeddings, trainable=False)
            self.gallery_ids = tf.Variable(gallery.ids, trainable=False)
            if gallery.labels is not None:
                self.gallery_labels = tf.Variable(gallery.labels, trainable=False)
        self.metadata = tf.saved_model.Asset(metadata_path)


def exact_search(queries, gallery, distance, k):
    """Top-`k` gallery rows for each query: `(distances, indices)`, nearest first.

    Exact brute-force search in float32; with a similarity (`inner_product`)
    the returned values are similarities, largest first. Ties keep the lower
    gallery row first.
    """
    matrix = distance(queries, gallery)
    if distance.is_similarity:
        values, indices = tf.math.top_k(matrix, k=k)
        return values, indices
    values, indices = tf.math.top_k(-matrix, k=k)
    return -values, indices


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


def _build_signatures(module, input_shape, input_dtype, image_spec, distance, top_k, l2_normalize):
    """Returns the `{name: concrete function}` signatures of the export."""
    embedder = module.embedder

    def embed(inputs):
        embeddings = tf.cast(embedder(inputs, training=False), tf.float32)
        if l2_normalize:
            embeddings = tf.math.l2_normalize(embeddings, axis=1, epsilon=1e-12)
        return embeddings

    def retrieve_from(embeddings):
        gallery = tf.convert_to_tensor(module.gallery_embeddings)
        values, indices = exact_search(embeddings, gallery, distance, top_k)
        outputs = {
            "ids": tf.gather(module.gallery_ids, indices),
            "distances": values,
            "indices": indices,
        }
        if hasattr(module, "gallery_labels"):
            outputs["labels"] = tf.gather(module.gallery_labels, indices)
        return outputs

    inputs_spec = tf.TensorSpec((None, *input_shape), input_dtype, name="inputs")
    images_spec = tf.TensorSpec((None,), tf.string, name="images")
    signatures = {}

    @tf.function(input_signature=[inputs_spec])
    def serving_default(inputs):
        return {"embeddings": embed(inputs)}

    signatures["serving_default"] = serving_default
    if image_spec is not None:
        decode = _decoder(image_spec)

        @tf.function(input_signature=[images_spec])
        def embed_images(images):
            return {"embeddings": embed(tf.cast(decode(images), input_dtype))}

        signatures["embed_images"] = embed_images
    if hasattr(module, "gallery_embeddings"):

        @tf.function(input_signature=[inputs_spec])
        def retrieve(inputs):
            return retrieve_from(embed(inputs))

        signatures["retrieve"] = retrieve
        if image_spec is not None:

            @tf.function(input_signature=[images_spec])
            def retrieve_images(images):
                return retrieve_from(embed(tf.cast(decode(images), input_dtype)))

            signatures["retrieve_images"] = retrieve_images
    return {name: fn.get_concrete_function() for name, fn in signatures.items()}


def save_embedder(
    path,
    embedder,
    input_shape,
    image_spec=None,
    gallery=None,
    distance="cosine",
    top_k=10,
    l2_normalize=False,
    metadata=None,
):
    """Writes a SavedModel of `embedder` to `path` and returns its signature names.

    Lower-level than `tfmetric.export.export_for_serving` (no versioning, no
    warm-up, not atomic): use it to place a SavedModel yourself.

    Args:
        path: Directory to write (created; must not hold a SavedModel).
        embedder: Keras model mapping one float input to `(batch, dim)`.
        input_shape: The input shape without the batch (`None` = free).
        image_spec: A `tfmetric.export.ImageSpec` to add `embed_images`, or `None`.
        gallery: A `tfmetric.export.Gallery` to add `retrieve`, or `None`.
        distance: Distance of `retrieve` (name, config or instance). Defaults
            to `"cosine"`.
        top_k: Number of gallery items `retrieve` returns (capped at the
            gallery size). Defaults to `10`.
        l2_normalize: Whether the signatures L2-normalise the embeddings (the
            gallery embeddings are then normalised too). Defaults to `False`.
        metadata: JSON-serialisable dict stored as
            `assets/tfmetric_export.json`. Defaults to `{}`.

    Returns:
        The list of signature names.

    Example:

    >>> import keras, os, tempfile
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> path = os.path.join(tempfile.mkdtemp(), "embedder")
    >>> tfmetric.export.save_embedder(path, model, (3,))
    ['serving_default']
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "Exporting a SavedModel needs the TensorFlow Keras backend; set KERAS_BACKEND="
            f"tensorflow (current backend: {keras.backend.backend()})."
        )
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive integer; got {top_k!r}.")
    distance = distances_lib.get(distance)
    input_dtype = tf.as_dtype(keras.backend.standardize_dtype(embedder.inputs[0].dtype))
    with tempfile.TemporaryDirectory() as scratch:
        metadata_path = os.path.join(scratch, METADATA_FILENAME)
        with open(metadata_path, "w") as f:
            json.dump(metadata or {}, f, indent=2, sort_keys=True)
        module = _EmbedderModule(embedder, gallery, metadata_path, l2_normalize)
        k = min(int(top_k), len(gallery)) if gallery is not None else int(top_k)
        signatures = _build_signatures(
            module, input_shape, input_dtype, image_spec, distance, k, l2_normalize
        )
        tf.saved_model.save(module, os.fspath(path), signatures=signatures)
    return list(signatures)
