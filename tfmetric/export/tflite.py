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
        ValueError: for an unknown variant, or `"int8"` without a
            representative set.
    """
    check_variants([variant])
    return convert_loaded(
        tf.saved_model.load(os.fspath(saved_model_dir)), variant, signature, representative
    )


def convert_loaded(loaded, variant, signature="serving_default", representative=None):
    """`convert_tflite` of an already loaded SavedModel (several variants load it once)."""
    check_variants([variant])
    # Converting the loaded concrete function (rather than `from_saved_model`)
    # freezes the Keras 3 variables into constants; `from_saved_model` keeps
    # them as uninitialised resource variables.
    if signature not in loaded.signatures:
        raise ValueError(
            f"`signature` {signature!r} is not in the SavedModel; it has {list(loaded.signatures)}."
        )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [loaded.signatures[signature]], loaded
    )
    if variant != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("The `int8` variant needs a `representative` set of model inputs.")
        function = loaded.signatures[signature]
        names = sorted(function.structured_input_signature[1])
        if isinstance(representative, dict):
            samples = {k: np.asarray(v, "float32") for k, v in representative.items()}
        else:
            samples = {name: np.asarray(representative, "float32") for name in names}
        count = min(len(v) for v in samples.values())

        def dataset():
            for i in range(count):
                yield {name: samples[name][i : i + 1] for name in names}

        converter.representative_dataset = dataset
        if signature == "serving_default":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        else:
            # Retrieval gathers ids (possibly strings): int8 where possible.
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                tf.lite.OpsSet.TFLITE_BUILTINS,
            ]
    return converter.convert()


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
