"""TF Serving warm-up records: `assets.extra/tf_serving_warmup_requests`.

TF Serving replays these `PredictionLog` records when it loads a version, so
the first real request does not pay for graph initialisation. The
`tensorflow_serving` protos are not a dependency of tfmetric, so the records are
written in the protobuf wire format directly; the field numbers are those of
`tensorflow_serving/apis/prediction_log.proto`, `predict.proto` and
`model.proto`, and tensors are TensorFlow's own `TensorProto`.
"""

import os

import numpy as np
import tensorflow as tf

__all__ = ["WARMUP_FILENAME", "predict_log_record", "write_warmup_requests"]

WARMUP_FILENAME = "tf_serving_warmup_requests"

# Field numbers of the tensorflow.serving messages written here.
_PREDICTION_LOG_PREDICT_LOG = 6
_PREDICT_LOG_REQUEST = 1
_PREDICT_REQUEST_MODEL_SPEC = 1
_PREDICT_REQUEST_INPUTS = 2
_MODEL_SPEC_NAME = 1
_MODEL_SPEC_SIGNATURE_NAME = 3
_MAP_ENTRY_KEY = 1
_MAP_ENTRY_VALUE = 2


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field, payload):
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def predict_log_record(model_name, signature_name, inputs):
    """Serialises a `tensorflow.serving.PredictionLog` holding one `PredictRequest`.

    Args:
        model_name: The model name of the request's `ModelSpec`.
        signature_name: The signature the request calls.
        inputs: Dict of input name → array (numeric or bytes).

    Returns:
        The serialised record (bytes).
    """
    spec = _length_delimited(_MODEL_SPEC_NAME, model_name) + _length_delimited(
        _MODEL_SPEC_SIGNATURE_NAME, signature_name
    )
    request = _length_delimited(_PREDICT_REQUEST_MODEL_SPEC, spec)
    for key in sorted(inputs):
        tensor = tf.make_tensor_proto(inputs[key]).SerializeToString()
        entry = _length_delimited(_MAP_ENTRY_KEY, key) + _length_delimited(_MAP_ENTRY_VALUE, tensor)
        request += _length_delimited(_PREDICT_REQUEST_INPUTS, entry)
    predict_log = _length_delimited(_PREDICT_LOG_REQUEST, request)
    return _length_delimited(_PREDICTION_LOG_PREDICT_LOG, predict_log)


def warmup_inputs(signatures, sample, image_spec):
    """One small request per signature: `{signature name: {input name: array}}`.

    Args:
        signatures: The `Signature`s of the export plan.
        sample: One model input `(1, ...)` as float32.
        image_spec: The `ImageSpec` of the image signatures, or `None`.
    """
    requests = {}
    image = None
    if image_spec is not None:
        pixels = np.full((image_spec.height, image_spec.width, image_spec.channels), 128, "uint8")
        image = np.array([tf.io.encode_png(pixels).numpy()], dtype=object)
    for signature in signatures:
        value = image if signature.images else sample
        requests[signature.name] = {name: value for name in signature.input_names()}
    return requests


def write_warmup_requests(saved_model_dir, model_name, requests):
    """Writes `assets.extra/tf_serving_warmup_requests` as a TFRecord file.

    Args:
        saved_model_dir: The SavedModel (version) directory.
        model_name: The served model name.
        requests: `{signature name: {input name: array}}`.

    Returns:
        The path of the written file.
    """
    directory = os.path.join(saved_model_dir, "assets.extra")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, WARMUP_FILENAME)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests.items():
            writer.write(predict_log_record(model_name, signature, inputs))
    return path
