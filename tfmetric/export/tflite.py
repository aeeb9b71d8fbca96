"""TFLite variants of an exported embedder, run with LiteRT.

Variants, converted from the SavedModel's `serving_default` (or `retrieve`)
signature; all keep float32 inputs and outputs, so every variant is called the
same way:

- `"fp32"`: float32 weights and compute;
- `"fp16"`: float16 weights, float32 compute;
- `"dynamic_int8"`: int8 weights, activations quantised on the fly;
- `"int8"`: full-integer weights and activations, calibrated on a
  representative set (quantize/dequantize only at the float32 inputs/outputs);
  the retrieval files keep float kernels where int8 has none (e.g. gathering
  string ids).

The files are run with LiteRT (`ai_edge_litert.interpreter.Interpreter`, the
`litert` extra), not the deprecated `tf.lite.Interpreter`.
"""

import os
import warnings

import numpy as np
import tensorflow as tf

from tfmetric._src import validation

__all__ = ["VARIANTS", "LiteRTRunner", "TFLiteOptions", "convert_tflite"]

VARIANTS = ("fp32", "fp16", "dynamic_int8", "int8")


def check_variants(variants):
    """Validates a list (or comma-separated string) of TFLite variant names."""
    if variants is None:
        return ()
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    variants = tuple(variants)
    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"`tflite` variants must be among {list(VARIANTS)}; got {variant!r}.")
    if len(set(variants)) != len(variants):
        raise ValueError(f"`tflite` lists a variant twice: {list(variants)}.")
    return variants


class TFLiteOptions:
    """Which TFLite files an export writes.

    Args:
        variants: Variants among `"fp32"`, `"fp16"`, `"dynamic_int8"`,
            `"int8"` (a list or a comma-separated string). Defaults to none.
        retrieval: With a gallery, also write `retrieve_<variant>.tflite`
            (the baked-in exact search). Defaults to `True`.
        verify: With a `verify` signature, also write
            `verify_<variant>.tflite`. Defaults to `True`.
        representative: Calibration inputs of `"int8"` `(n, ...)`. Defaults
            to the validation inputs, then the gallery inputs.

    Example:

    >>> tfmetric.export.TFLiteOptions("fp32,int8").variants
    ('fp32', 'int8')
    """

    def __init__(self, variants=(), retrieval=True, verify=True, representative=None):
        self.variants = check_variants(variants)
        self.retrieval = validation.check_bool(retrieval, "retrieval")
        self.verify = validation.check_bool(verify, "verify")
        self.representative = representative

    @classmethod
    def from_argument(cls, tflite):
        """Options from the `tflite` argument: options, variant names, or `None`."""
        if tflite is None:
            return cls()
        if isinstance(tflite, cls):
            return tflite
        if isinstance(tflite, (str, list, tuple)):
            return cls(tflite)
        raise TypeError(
            "`tflite` must be None, variant names or a tfmetric.export.TFLiteOptions; got "
            f"{tflite!r}."
        )

    def __repr__(self):
        return (
            f"TFLiteOptions(variants={self.variants!r}, retrieval={self.retrieval!r}, "
            f"verify={self.verify!r})"
        )


def convert_tflite(saved_model_dir, variant, signature="serving_default", representative=None):
    """Converts one signature of a SavedModel to a TFLite flatbuffer.

    Args:
        saved_model_dir: A SavedModel directory (as written by tfmetric.export).
        variant: One of `"fp32"`, `"fp16"`, `"dynamic_int8"`, `"int8"`.
        signature: The signature to convert. Defaults to `"serving_default"`.
        representative: For `"int8"`: float32 model inputs `(n, ...)` used to
            calibrate activation ranges (100 to 500 samples are typical), or
            a dict of them by input name for a signature with several inputs.

    Returns:
        The TFLite model (bytes), whose single signature is named
        `"serving_default"` whatever signature it was converted from.

    Raises:
        TypeError: for a `saved_model_dir` that is not a path, a `variant` or
            `signature` that is not a string, or a `representative` that is
            not numbers.
        FileNotFoundError: for a missing `saved_model_dir`.
        ValueError: for a `saved_model_dir` that is not a SavedModel
            directory, an unknown variant or signature, or `"int8"` without
            a representative set (or with one of the wrong shape, or holding
            NaN/Inf).
    """
    path = _check_saved_model_dir(saved_model_dir)
    _check_variant(variant)
    return convert_loaded(tf.saved_model.load(path), variant, signature, representative)


def _check_saved_model_dir(saved_model_dir):
    if not isinstance(saved_model_dir, (str, os.PathLike)):
        raise TypeError(
            f"`saved_model_dir` must be the path of a SavedModel directory; got {saved_model_dir!r}."
        )
    path = os.fspath(saved_model_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"`saved_model_dir` {path!r} does not exist.")
    if not os.path.isdir(path):
        raise ValueError(f"`saved_model_dir` {path!r} is a file, not a SavedModel directory.")
    if not any(
        os.path.isfile(os.path.join(path, n)) for n in ("saved_model.pb", "saved_model.pbtxt")
    ):
        raise ValueError(
            f"`saved_model_dir` {path!r} is not a SavedModel directory (it has no saved_model.pb)."
        )
    return path


def _check_variant(variant):
    if not isinstance(variant, str):
        raise TypeError(f"`variant` must be one of {list(VARIANTS)} (a string); got {variant!r}.")
    return validation.check_choice(variant, "variant", VARIANTS)


def _representative_samples(representative, function):
    """The float32 calibration inputs `{input name: (n, ...)}` of a signature, checked."""
    specs = function.structured_input_signature[1]
    names = sorted(specs)
    if isinstance(representative, dict):
        if set(representative) != set(names):
            raise ValueError(
                f"`representative` must have the signature's inputs {names} as keys; got "
                f"{sorted(representative)}."
            )
        given = {name: (representative[name], f"representative[{name!r}]") for name in names}
    else:
        given = {name: (representative, "representative") for name in names}
    samples = {}
    for name, (values, label) in given.items():
        try:
            array = np.asarray(values, "float32")
        except (TypeError, ValueError):
            raise TypeError(
                f"`{label}` must be float model inputs of shape (n, ...); got "
                f"{type(values).__name__}."
            ) from None
        expected = specs[name].shape
        if expected.rank is not None:
            sample_shape = expected.as_list()[1:]
            if array.ndim != expected.rank or any(
                w is not None and w != size
                for w, size in zip(sample_shape, array.shape[1:], strict=True)
            ):
                shape = "(" + ", ".join(
                    ["n"] + ["?" if w is None else str(w) for w in sample_shape]
                )
                shape += ",)" if not sample_shape else ")"
                raise ValueError(
                    f"`{label}` must have the shape {shape} of the signature's input {name!r}; "
                    f"got {array.shape}."
                )
        if not len(array):
            raise ValueError(f"`{label}` holds no samples.")
        if not np.isfinite(array).all():
            raise ValueError(f"`{label}` holds NaN or Inf values.")
        samples[name] = array
    return samples


def convert_loaded(loaded, variant, signature="serving_default", representative=None):
    """`convert_tflite` of an already loaded SavedModel (several variants load it once)."""
    _check_variant(variant)
    if not isinstance(signature, str):
        raise TypeError(f"`signature` must be a signature name (a string); got {signature!r}.")
    if signature not in loaded.signatures:
        raise ValueError(
            f"`signature` {signature!r} is not in the SavedModel; it has {list(loaded.signatures)}."
        )
    function = loaded.signatures[signature]
    samples = None
    if variant == "int8":
        if representative is None:
            raise ValueError("The `int8` variant needs a `representative` set of model inputs.")
        samples = _representative_samples(representative, function)
    with warnings.catch_warnings():
        # The graph conversion of a calibrated file warns that the (float32) inputs have no
        # quantisation statistics: they stay float32, quantised inside the file.
        warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
        converted = _converter(loaded, signature, variant, samples, frozen=True).convert()
    content = _with_signature(converted, function)
    if content is None:  # the frozen graph's inputs are not the signature's names
        content = _converter(loaded, signature, variant, samples, frozen=False).convert()
    return content


def _converter(loaded, signature, variant, samples, frozen):
    """A TFLite converter of one loaded signature function for `variant`.

    `frozen`: convert the function with its variables frozen into constants
    (TensorFlow's graph conversion; `_with_signature` then names the inputs and
    outputs). Otherwise the converter's default for Keras 3 variables: it saves
    `loaded` to a temporary SavedModel and loads it back for every file (about
    two thirds of a small embedder's conversion time), and names them itself.
    Both start from the loaded concrete function: `from_saved_model` would keep
    Keras 3 variables as uninitialised resource variables.
    """
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [loaded.signatures[signature]], loaded
    )
    converter.experimental_lower_to_saved_model = not frozen
    if variant != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        names = sorted(samples)
        count = min(len(v) for v in samples.values())

        def dataset():
            for i in range(count):
                sample = {name: samples[name][i : i + 1] for name in names}
                # The frozen graph has no signature: inputs by position.
                yield [sample[name] for name in names] if frozen else sample

        converter.representative_dataset = dataset
        if signature == "serving_default":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        else:
            # Retrieval gathers ids (possibly strings): int8 where possible.
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                tf.lite.OpsSet.TFLITE_BUILTINS,
            ]
    return converter


def _with_signature(content, function):
    """Adds the `serving_default` signature (the function's input and output names) to a file.

    The frozen graph's subgraph takes the function's inputs in the order of
    their names (its input tensors carry them) and returns its outputs in the
    order of their names (a concrete function's outputs are its flattened
    structured outputs). Returns `None` where the inputs do not carry the
    names, so that the caller converts the signature the other way.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(content)
    graph = model.subgraphs[0]
    inputs = sorted(function.structured_input_signature[1])
    outputs = sorted(function.structured_outputs)
    found = [graph.tensors[i].name.decode() for i in graph.inputs]  # the object API's bytes
    if len(model.subgraphs) != 1 or found != inputs or len(graph.outputs) != len(outputs):
        return None

    def tensor_map(name, index):
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = name, index
        return entry

    definition = schema.SignatureDefT()
    definition.signatureKey = "serving_default"
    definition.subgraphIndex = 0
    definition.inputs = [tensor_map(n, i) for n, i in zip(inputs, graph.inputs, strict=True)]
    definition.outputs = [tensor_map(n, i) for n, i in zip(outputs, graph.outputs, strict=True)]
    model.signatureDefs = [definition]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


class LiteRTRunner:
    """Runs one signature of a TFLite file with LiteRT, for any batch size.

    Args:
        model: Path of a `.tflite` file, or its bytes.
        signature: Signature name. Defaults to the file's only signature.
        num_threads: CPU threads for LiteRT. Defaults to `1`.

    Example:

    >>> import keras, os, tempfile
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> path = os.path.join(tempfile.mkdtemp(), "embedder")
    >>> _ = tfmetric.export.save_embedder(path, model, (3,))
    >>> runner = tfmetric.export.LiteRTRunner(tfmetric.export.convert_tflite(path, "fp32"))
    >>> runner(inputs=np.ones((4, 3), "float32"))["embeddings"].shape
    (4, 2)
    """

    def __init__(self, model, signature=None, num_threads=1):
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(model, (bytes, bytearray)):
            self.interpreter = Interpreter(model_content=bytes(model), num_threads=num_threads)
        else:
            self.interpreter = Interpreter(model_path=os.fspath(model), num_threads=num_threads)
        if signature is None:
            signatures = list(self.interpreter.get_signature_list())
            if len(signatures) != 1:
                raise ValueError(f"Give a `signature`; the model has {signatures}.")
            signature = signatures[0]
        self.signature = signature
        self._runner = self.interpreter.get_signature_runner(signature)

    def __call__(self, **inputs):
        """Returns `{output name: numpy array}` for keyword inputs."""
        return {k: np.asarray(v) for k, v in self._runner(**inputs).items()}
