"""The export plan: everything an export writes, decided once before anything is written.

`plan_export` validates the model and every option and resolves them into an
`ExportPlan`: the embedder and its input, the distance, the gallery, the image
spec, the `verify` decision, the list of signatures, the TFLite files and the
metadata. The SavedModel builder, the warm-up writer, the TFLite stage, the
parity report and the metadata writer all read the same plan.
"""

import datetime
import os
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tfmetric import distances as distances_lib
from tfmetric._src import validation as checks
from tfmetric.export import gallery as gallery_lib
from tfmetric.export import inputs as inputs_lib
from tfmetric.export import model_loading, verification
from tfmetric.export.image_spec import ImageSpec
from tfmetric.export.parity import ParityOptions
from tfmetric.export.tflite import TFLiteOptions
from tfmetric.export.validation import ValidationData

__all__ = ["ExportPlan", "Signature", "TFLiteTarget", "plan_export"]

FORMAT = "tfmetric.export/2"


class Signature(NamedTuple):
    """One SavedModel signature: its name, what it computes, and whether it takes images.

    `task` is `"embed"` (→ `embeddings`), `"retrieve"` (→ `ids`, `distances`,
    `indices`, `labels`) or `"verify"` (two inputs → `score`, `is_match`).
    """

    name: str
    task: str
    images: bool

    def input_names(self):
        """The signature's input names."""
        if self.task == "verify":
            return ("images1", "images2") if self.images else ("x1", "x2")
        return ("images",) if self.images else ("inputs",)


class TFLiteTarget(NamedTuple):
    """One TFLite file: converted from `signature`, as `variant`, named `<prefix>_<variant>`."""

    prefix: str
    signature: str
    variant: str

    @property
    def key(self):
        return f"{self.prefix}_{self.variant}"

    @property
    def filename(self):
        return f"{self.key}.tflite"


_PREFIXES = {"serving_default": "embedder", "retrieve": "retrieve", "verify": "verify"}


def _signatures(image_spec, gallery, verify):
    images = image_spec is not None
    signatures = [Signature("serving_default", "embed", False)]
    if images:
        signatures.append(Signature("embed_images", "embed", True))
    if gallery is not None:
        signatures.append(Signature("retrieve", "retrieve", False))
        if images:
            signatures.append(Signature("retrieve_images", "retrieve", True))
    if verify is not None:
        signatures.append(Signature("verify", "verify", False))
        if images:
            signatures.append(Signature("verify_images", "verify", True))
    return tuple(signatures)


def _tflite_targets(options, signatures):
    names = {s.name for s in signatures}
    converted = ["serving_default"]
    if options.retrieval and "retrieve" in names:
        converted.append("retrieve")
    if options.verify and "verify" in names:
        converted.append("verify")
    return tuple(
        TFLiteTarget(_PREFIXES[signature], signature, variant)
        for variant in options.variants
        for signature in converted
    )


class ExportPlan:
    """What an export writes, resolved and validated (built by `plan_export`).

    Attributes:
        name: The served model name.
        model: The model given to the export.
        embedder: The Keras model mapping one float input to embeddings.
        input_shape: Its input shape without the batch (`None` = free).
        input_dtype: Its input dtype (a string).
        embedding_dim: The embedding size.
        distance: The `tfmetric.distances.Distance` of `retrieve`, of
            `verify` for non-Siamese models and of the parity metrics.
        distance_source: Where the distance came from: `"argument"`,
            `"scorer"`, `"model"`, `"loss"` or `"default"`.
        l2_normalize: Whether the exported embeddings are L2-normalised.
        image_spec: The `ImageSpec` of the `*_images` signatures, or `None`.
        gallery: The `Gallery` of `retrieve`, or `None`.
        top_k: Gallery items `retrieve` returns (capped at the gallery size).
        verify: The `verification.VerifyPlan`, or `None`.
        signatures: The `Signature`s of the SavedModel, in order.
        tflite: The `TFLiteTarget`s, in order.
        representative: Calibration inputs of the `int8` variant, or `None`.
        validation: The checked `ValidationData` of the parity report.
        parity: The `ParityOptions`.
        trained_policy: The mixed precision policy the model was given in
            (`"mixed_bfloat16"`, ...), or `None`. A mixed-precision model is
            exported as a float32 copy with the same weights
            (`tfmetric.export.float32_copy`): `model` and `embedder` are that
            copy.
    """

    def __init__(
        self,
        *,
        name,
        model,
        embedder,
        input_shape,
        input_dtype,
        embedding_dim,
        distance,
        distance_source,
        l2_normalize,
        output_l2_normalized,
        image_spec,
        gallery,
        top_k,
        verify,
        signatures,
        tflite,
        representative,
        validation,
        parity,
        trained_policy=None,
    ):
        self.name = name
        self.model = model
        self.embedder = embedder
        self.input_shape = input_shape
        self.input_dtype = input_dtype
        self.embedding_dim = embedding_dim
        self.distance = distance
        self.distance_source = distance_source
        self.l2_normalize = l2_normalize
        self.output_l2_normalized = output_l2_normalized
        self.image_spec = image_spec
        self.gallery = gallery
        self.top_k = top_k
        self.verify = verify
        self.signatures = signatures
        self.tflite = tflite
        self.representative = representative
        self.validation = validation
        self.parity = parity
        self.trained_policy = trained_policy
        self._serving_body = model_loading.final_unit_normalization(embedder)

    @property
    def signature_names(self):
        return [s.name for s in self.signatures]

    def embed(self, inputs):
        """The exported embeddings of `inputs` (Keras, float32, normalised if planned)."""
        body, unit_normalized = self._serving_body
        return _embed(body, self.l2_normalize, inputs, unit_normalized)

    def representative_for(self, signature):
        """The int8 calibration data of a signature (a dict by input name for `verify`)."""
        if signature != "verify" or self.representative is None:
            return self.representative
        pairs = self.validation.verification_pairs()
        if pairs is not None:
            return {"x1": pairs[0], "x2": pairs[1]}
        samples = self.representative
        return {"x1": samples, "x2": np.roll(samples, 1, axis=0)}

    def metadata(self):
        """The JSON metadata stored as `assets/tfmetric_export.json`."""
        import tfmetric

        gallery = self.gallery
        return {
            "format": FORMAT,
            "name": self.name,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source_model": self.embedder.name,
            "embedding_dim": self.embedding_dim,
            "distance": distances_lib.serialize(self.distance),
            "distance_is_similarity": self.distance.kind == "similarity",
            "distance_kind": self.distance.kind,
            "distance_source": self.distance_source,
            "normalization": {
                "l2_normalize_in_export": bool(self.l2_normalize),
                "output_l2_normalized": self.output_l2_normalized,
            },
            "precision": {"trained": self.trained_policy or "float32", "exported": "float32"},
            "input": {
                "name": "inputs",
                "shape": [None, *self.input_shape],
                "dtype": self.input_dtype,
            },
            "image_spec": None if self.image_spec is None else self.image_spec.to_json(),
            "gallery": None
            if gallery is None
            else {
                "size": len(gallery),
                "top_k": self.top_k,
                "ids_dtype": "string" if gallery.ids.dtype.kind == "U" else "int64",
                "has_labels": gallery.labels is not None,
            },
            "match": None
            if gallery is None or gallery.match_threshold is None
            else {"threshold": gallery.match_threshold, "unknown_label": gallery.unknown_label},
            "verify": None if self.verify is None else self.verify.to_json(),
            "signatures": self.signature_names,
            "tflite": list(dict.fromkeys(t.variant for t in self.tflite)),
            "tflite_files": [t.filename for t in self.tflite],
            "versions": {
                "tfmetric": tfmetric.__version__,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
            },
        }


def _embed(embedder, l2_normalize, inputs, unit_normalized=False):
    """The embeddings the export serves; `unit_normalized`: `embedder` is the body of one
    whose final `UnitNormalization` was split off (`model_loading.final_unit_normalization`)."""
    embeddings = tf.cast(embedder(inputs, training=False), tf.float32)
    if unit_normalized:
        # Keras' x * min(rsqrt(|x|^2), 1e12), in the form TFLite fuses into L2_NORMALIZATION.
        embeddings = tf.math.l2_normalize(embeddings, axis=1, epsilon=1e-24)
    if l2_normalize:
        embeddings = tf.math.l2_normalize(embeddings, axis=1, epsilon=1e-12)
    return embeddings


def _image_spec(argument, input_shape, recorded_scaling):
    if argument is False:
        return None
    if argument is None:
        spec = ImageSpec.for_input_shape(input_shape)
        if spec is not None and recorded_scaling is not None:
            spec = ImageSpec(spec.height, spec.width, spec.channels, recorded_scaling)
        return spec
    if not isinstance(argument, ImageSpec):
        raise TypeError(
            f"`image_spec` must be None, False or a tfmetric.export.ImageSpec; got {argument!r}."
        )
    return ImageSpec.for_input_shape(
        input_shape, argument.height, argument.width, argument.channels, argument.scaling
    )


def _check_top_k(top_k):
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive integer; got {top_k!r}.")
    return int(top_k)


def plan_export(
    model,
    *,
    name=None,
    distance=None,
    l2_normalize=False,
    image_spec=None,
    gallery=None,
    top_k=10,
    validation=None,
    verify=None,
    tflite=None,
    parity=None,
):
    """Validates an export's model and options and resolves them into an `ExportPlan`.

    Takes the arguments of `tfmetric.export.export_for_serving` (see there)
    except the output; writes nothing.

    Returns:
        An `ExportPlan`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="tiny")
    >>> plan = tfmetric.export.plan_export(model, gallery={"embeddings": np.eye(2)})
    >>> plan.signature_names, plan.metadata()["distance"]
    (['serving_default', 'retrieve'], 'cosine')
    """
    checks.check_tensorflow_backend("`tfmetric.export.plan_export`")
    source_name = None
    loss = None
    recorded_scaling = None
    if not isinstance(model, keras.Model):
        source_name = os.path.splitext(os.path.basename(os.fspath(model)))[0]
        path = model
        model = model_loading.load_keras_file(path)
        loss = model_loading.saved_loss(path)
        recorded_scaling = model_loading.recorded_image_scaling(path)
    elif getattr(model, "compiled", False):
        loss = getattr(model, "loss", None)
    # TFLite and TF Serving clients work in float32: a mixed-precision model is
    # exported as a float32 copy with the same weights.
    trained_policy = model_loading.mixed_precision_policy(model)
    model = model_loading.float32_copy(model)
    embedder, input_shape, dim = model_loading.resolve_embedder(model)
    name = name if name is not None else (source_name or embedder.name)
    if distance is None:
        distance, distance_source = model_loading.trained_distance(model, loss)
    else:
        distance, distance_source = distances_lib.get(distance), "argument"
    top_k = _check_top_k(top_k)
    l2_normalize = checks.check_bool(l2_normalize, "l2_normalize")
    image_spec = _image_spec(image_spec, input_shape, recorded_scaling)
    tflite = TFLiteOptions.from_argument(tflite)
    parity = ParityOptions.from_argument(parity)
    siamese = model_loading.is_siamese(model)
    verify_options = verification.VerifyOptions.from_argument(verify, siamese)
    gallery = gallery_lib.load_gallery(gallery, embedder, input_shape, dim)
    validation = ValidationData.from_source(validation, input_shape)
    representative = inputs_lib.load_inputs(tflite.representative, input_shape, "representative")
    if validation is None and gallery is not None and gallery.inputs is not None:
        validation = ValidationData(gallery.inputs, gallery.labels).check(input_shape)
    if representative is None and validation is not None:
        representative = validation.inputs
    if representative is None and gallery is not None and gallery.inputs is not None:
        representative = np.asarray(gallery.inputs, "float32")
    if "int8" in tflite.variants and representative is None:
        raise ValueError("The `int8` TFLite variant needs a `representative` set of inputs.")
    if validation is None and representative is not None:
        validation = ValidationData(representative)
    if validation is None:
        if any(d is None for d in input_shape):
            raise ValueError(
                f"The model input shape {input_shape} has free dimensions; give `validation` "
                "inputs for the parity report."
            )
        random_inputs = np.random.default_rng(0).uniform(0, 1, (64, *input_shape))
        validation = ValidationData(random_inputs.astype("float32"))

    l2_normalize = bool(l2_normalize)

    body, unit_normalized = model_loading.final_unit_normalization(embedder)

    def embed(inputs):
        return _embed(body, l2_normalize, inputs, unit_normalized)

    norms = np.linalg.norm(np.asarray(embed(validation.inputs[:1])), axis=1)
    verify_plan = None
    if verify_options is not None:
        verify_plan = verification.plan_verify(
            verify_options, model, siamese, embed, distance, validation.verification_pairs()
        )
    signatures = _signatures(image_spec, gallery, verify_plan)
    return ExportPlan(
        name=name,
        model=model,
        embedder=embedder,
        input_shape=input_shape,
        input_dtype=keras.backend.standardize_dtype(embedder.inputs[0].dtype),
        embedding_dim=dim,
        distance=distance,
        distance_source=distance_source,
        l2_normalize=l2_normalize,
        output_l2_normalized=bool(l2_normalize or np.allclose(norms, 1.0, atol=1e-3)),
        image_spec=image_spec,
        gallery=gallery,
        top_k=min(top_k, len(gallery)) if gallery is not None else top_k,
        verify=verify_plan,
        signatures=signatures,
        tflite=_tflite_targets(tflite, signatures),
        representative=representative,
        validation=validation,
        parity=parity,
        trained_policy=trained_policy,
    )
