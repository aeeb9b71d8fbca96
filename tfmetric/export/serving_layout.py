"""Versioned, atomic exports in the TF Serving layout.

```
OUTPUT/
  models.config                       # model_config_list of every model in OUTPUT
  NAME/
    1/                                # a complete SavedModel version
      saved_model.pb  variables/  fingerprint.pb
      assets/tfmetric_export.json     # metadata
      assets.extra/tf_serving_warmup_requests
      tflite/embedder_fp32.tflite ... # optional, with retrieve_<variant>.tflite
      parity.json                     # parity report
    2/ ...
```

Everything of a version is written into a hidden temporary directory inside
`OUTPUT/NAME` (TF Serving only loads integer-named directories) and renamed to
the next integer when complete, so an interrupted export never leaves a version
that TF Serving would load. Temporary directories left by killed exports are
removed by the next export.
"""

import datetime
import os
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfmetric import distances as distances_lib
from tfmetric.export import parity, saved_model, spec, tflite, warmup

__all__ = ["ExportResult", "export_for_serving", "next_version"]

MODELS_CONFIG = "models.config"
_TMP_PREFIX = ".tmp-export-"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExportResult:
    """What `export_for_serving` wrote.

    Attributes:
        version: The integer version.
        path: The version directory (a SavedModel).
        signatures: Names of the SavedModel signatures.
        tflite: Dict of file name → path of the TFLite files.
        report: The parity report (dict), or `None`.
        metadata: The metadata stored in `assets/tfmetric_export.json`.
    """

    def __init__(self, version, path, signatures, tflite_files, report, metadata):
        self.version = version
        self.path = path
        self.signatures = signatures
        self.tflite = tflite_files
        self.report = report
        self.metadata = metadata

    def __repr__(self):
        return f"ExportResult(version={self.version}, path={self.path!r})"


def _is_version(name):
    return re.fullmatch(r"[0-9]+", name) is not None


def _is_serving_base(path):
    return os.path.isdir(path) and all(
        (_is_version(entry) or entry.startswith(_TMP_PREFIX))
        and os.path.isdir(os.path.join(path, entry))
        for entry in os.listdir(path)
    )


def _check_output(output_dir, name):
    """Raises unless `output_dir` is absent, empty or a TF Serving models directory."""
    if not os.path.exists(output_dir):
        return
    if not os.path.isdir(output_dir):
        raise ValueError(f"`output` {output_dir!r} exists and is not a directory.")
    entries = os.listdir(output_dir)
    if entries and all(_is_version(e) for e in entries):
        raise ValueError(
            f"`output` {output_dir!r} holds model versions itself; pass its parent as "
            f"`output` and {os.path.basename(os.path.normpath(output_dir))!r} as `name`."
        )
    for entry in entries:
        path = os.path.join(output_dir, entry)
        if entry == MODELS_CONFIG and os.path.isfile(path):
            continue
        if entry.startswith(f".{MODELS_CONFIG}.tmp-"):
            continue
        if not _is_serving_base(path):
            raise ValueError(
                f"`output` {output_dir!r} is not empty and is not a TF Serving base directory: "
                f"{entry!r} is neither {MODELS_CONFIG!r} nor a directory of integer model "
                "versions. Choose an empty or new directory."
            )
    base = os.path.join(output_dir, name)
    if os.path.exists(base) and not _is_serving_base(base):
        raise ValueError(f"`output`/`name` {base!r} is not a directory of model versions.")


def next_version(base_dir):
    """The next integer version in `base_dir`: 1 + the largest, or 1."""
    if not os.path.isdir(base_dir):
        return 1
    versions = [int(e) for e in os.listdir(base_dir) if _is_version(e)]
    return max(versions, default=0) + 1


def _remove_stale_temporaries(base_dir):
    """Removes temporary directories of exports whose process is gone."""
    for entry in os.listdir(base_dir):
        if not entry.startswith(_TMP_PREFIX):
            continue
        try:
            pid = int(entry[len(_TMP_PREFIX) :].split("-")[0])
            os.kill(pid, 0)
            alive = True
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(os.path.join(base_dir, entry), ignore_errors=True)


def _fsync_tree(path):
    for root, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp_dir, base_dir):
    """Renames the finished temporary directory to the next free version."""
    _fsync_tree(tmp_dir)
    while True:
        version = next_version(base_dir)
        target = os.path.join(base_dir, str(version))
        if os.path.exists(target):
            continue
        try:
            os.rename(tmp_dir, target)
        except OSError:
            if os.path.exists(target):
                continue  # Another export took this version first.
            raise
        _fsync_dir(base_dir)
        return version, target


def write_models_config(output_dir, serving_base_path="/models"):
    """Writes `models.config` listing every model base in `output_dir` (atomically).

    Args:
        output_dir: The directory holding the model bases.
        serving_base_path: Where TF Serving sees `output_dir` (the container
            mount point). Defaults to `"/models"`.

    Returns:
        The path of `models.config`.
    """
    names = sorted(
        entry
        for entry in os.listdir(output_dir)
        if _is_serving_base(os.path.join(output_dir, entry))
        and any(_is_version(v) for v in os.listdir(os.path.join(output_dir, entry)))
    )
    configs = "".join(
        "  config {\n"
        f'    name: "{name}"\n'
        f'    base_path: "{serving_base_path.rstrip("/")}/{name}"\n'
        '    model_platform: "tensorflow"\n'
        "  }\n"
        for name in names
    )
    path = os.path.join(output_dir, MODELS_CONFIG)
    tmp = os.path.join(output_dir, f".{MODELS_CONFIG}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(f"model_config_list {{\n{configs}}}\n")
    os.replace(tmp, path)
    return path


def _probe_l2_normalized(embedder, sample, l2_normalize):
    if l2_normalize:
        return True
    norms = np.linalg.norm(np.asarray(embedder(sample, training=False), "float32"), axis=1)
    return bool(np.allclose(norms, 1.0, atol=1e-3))


def _metadata(
    name,
    embedder,
    input_shape,
    dim,
    distance,
    image_spec,
    gallery,
    top_k,
    l2_normalize,
    output_l2_normalized,
    signatures,
    tflite_variants,
):
    import tfmetric

    return {
        "format": "tfmetric.export/1",
        "name": name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_model": embedder.name,
        "embedding_dim": dim,
        "distance": distances_lib.serialize(distance),
        "distance_is_similarity": distance.is_similarity,
        "normalization": {
            "l2_normalize_in_export": bool(l2_normalize),
            "output_l2_normalized": output_l2_normalized,
        },
        "input": {
            "name": "inputs",
            "shape": [None, *input_shape],
            "dtype": keras.backend.standardize_dtype(embedder.inputs[0].dtype),
        },
        "image_spec": None if image_spec is None else image_spec.to_json(),
        "gallery": None
        if gallery is None
        else {
            "size": len(gallery),
            "top_k": min(top_k, len(gallery)),
            "ids_dtype": "string" if gallery.ids.dtype.kind == "U" else "int64",
            "has_labels": gallery.labels is not None,
        },
        "signatures": signatures,
        "tflite": list(tflite_variants),
        "versions": {
            "tfmetric": tfmetric.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
    }


def export_for_serving(
    model,
    output_dir,
    name=None,
    gallery=None,
    distance=None,
    top_k=10,
    l2_normalize=False,
    image_height=None,
    image_width=None,
    image_channels=None,
    image_scaling=None,
    tflite_variants=(),
    tflite_retrieval=True,
    representative=None,
    validation=None,
    serving_base_path="/models",
    latency_runs=10,
    require_parity=False,
):
    """Exports an embedder as the next version of a TF Serving model, atomically.

    Writes `output_dir/name/<version>/` (the SavedModel of `tfmetric.export.
    save_embedder` with warm-up requests and metadata), optional TFLite files
    and a parity report inside it, then refreshes `output_dir/models.config`.
    All input is checked before anything is written.

    Args:
        model: A `keras.Model` or the path of a `.keras` file; a model with an
            `embedder` attribute is exported through it.
        output_dir: The models directory (absent, empty or holding TF Serving
            model bases).
        name: The served model name. Defaults to the `.keras` file stem, or the
            model name.
        gallery: `None`, an `.npz` path, a dict or a `tfmetric.export.Gallery`
            with `embeddings` (or `inputs`) and optional `ids` and integer
            `labels`; adds the `retrieve` signatures.
        distance: Distance of retrieval and of the parity metrics. Defaults to
            the model's `distance` attribute if any, else `"cosine"`.
        top_k: Gallery items returned by `retrieve`. Defaults to `10`.
        l2_normalize: L2-normalise the exported embeddings. Defaults to `False`.
        image_height, image_width, image_channels, image_scaling: The
            `tfmetric.export.ImageSpec` of `embed_images`; each defaults to the
            model input shape (scaling to `"unit"`).
        tflite_variants: TFLite variants among `"fp32"`, `"fp16"`,
            `"dynamic_int8"`, `"int8"` (a list or a comma-separated string).
            Defaults to none.
        tflite_retrieval: With a gallery, also write `retrieve_<variant>.tflite`
            with the baked-in exact search. Defaults to `True`.
        representative: Calibration inputs of `"int8"` (an array, or an `.npz`
            with `inputs`). Defaults to the validation or gallery inputs.
        validation: Parity inputs (array, or `.npz` with `inputs` and optional
            integer `labels`). Defaults to the gallery inputs and labels, then
            the representative set, then 64 uniform random inputs.
        serving_base_path: Where TF Serving sees `output_dir`, for
            `models.config`. Defaults to `"/models"`.
        latency_runs: Timed calls per batch size in the parity report; `0`
            skips timing. Defaults to `10`.
        require_parity: Abort (writing no version) if a parity target is
            missed. Defaults to `False`.

    Returns:
        An `ExportResult`.

    Raises:
        FileNotFoundError: for a missing model, gallery or data file.
        ValueError: for a model that is not an embedding model, a gallery of
            the wrong dimension, an output that is not a TF Serving base, bad
            arguments, or (with `require_parity`) a missed parity target.
        RuntimeError: if a TFLite conversion fails (no version is written).

    Example:

    >>> import keras, tempfile
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="tiny")
    >>> out = tempfile.mkdtemp()
    >>> tfmetric.export.export_for_serving(model, out, latency_runs=0).version
    1
    >>> tfmetric.export.export_for_serving(model, out, latency_runs=0).version
    2
    """
    output_dir = os.fspath(output_dir)
    source_name = None
    if not isinstance(model, keras.Model):
        source_name = os.path.splitext(os.path.basename(os.fspath(model)))[0]
        model = spec.load_keras_file(model)
    embedder, input_shape, dim = spec.resolve_embedder(model)
    name = name or source_name or embedder.name
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(
            f"`name` must be letters, digits, '_', '-' or '.', starting with a letter or "
            f"digit; got {name!r}."
        )
    _check_output(output_dir, name)
    if distance is None:
        distance = getattr(model, "distance", None)
    distance = distances_lib.get(distance or "cosine")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive integer; got {top_k!r}.")
    image_spec = spec.ImageSpec.for_input_shape(
        input_shape, image_height, image_width, image_channels, image_scaling
    )
    gallery = spec.load_gallery(gallery, embedder, input_shape, dim)
    variants = tflite.check_variants(tflite_variants)
    representative = spec.load_inputs(representative, input_shape, "representative")
    validation_inputs, validation_labels = _validation_set(validation, input_shape, gallery)
    if representative is None:
        representative = validation_inputs
    if representative is None and gallery is not None and gallery.inputs is not None:
        representative = np.asarray(gallery.inputs, "float32")
    if "int8" in variants and representative is None:
        raise ValueError("The `int8` TFLite variant needs a `representative` set of inputs.")
    if validation_inputs is None:
        validation_inputs = representative
    if validation_inputs is None:
        if any(d is None for d in input_shape):
            raise ValueError(
                f"The model input shape {input_shape} has free dimensions; give `validation` "
                "inputs for the parity report."
            )
        validation_inputs = np.random.default_rng(0).uniform(0, 1, (64, *input_shape))
        validation_inputs = validation_inputs.astype("float32")
    sample = validation_inputs[:1]

    signatures = ["serving_default"]
    if image_spec is not None:
        signatures.append("embed_images")
    if gallery is not None:
        signatures.append("retrieve")
        if image_spec is not None:
            signatures.append("retrieve_images")
    metadata = _metadata(
        name,
        embedder,
        input_shape,
        dim,
        distance,
        image_spec,
        gallery,
        int(top_k),
        l2_normalize,
        _probe_l2_normalized(embedder, sample, l2_normalize),
        signatures,
        variants,
    )

    base_dir = os.path.join(output_dir, name)
    os.makedirs(base_dir, exist_ok=True)
    _remove_stale_temporaries(base_dir)
    tmp_dir = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=base_dir)
    try:
        written = saved_model.save_embedder(
            tmp_dir,
            embedder,
            input_shape,
            image_spec,
            gallery,
            distance,
            int(top_k),
            l2_normalize,
            metadata,
        )
        if written != signatures:
            raise RuntimeError(f"Signatures {written} differ from the metadata's {signatures}.")
        warmup.write_warmup_requests(
            tmp_dir, name, warmup.warmup_inputs(signatures, sample, image_spec)
        )
        tflite_files = _write_tflite(
            tmp_dir, variants, gallery is not None and tflite_retrieval, representative
        )
        report = _parity(
            embedder,
            l2_normalize,
            tmp_dir,
            tflite_files,
            validation_inputs,
            validation_labels,
            distance,
            latency_runs,
        )
        parity.write_report(report, os.path.join(tmp_dir, "parity.json"))
        if require_parity and report["passed"] is False:
            raise ValueError(
                "The export missed a parity target (`require_parity=True`); no version was "
                "written.\n" + parity.format_report(report)
            )
        version, path = _publish(tmp_dir, base_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    write_models_config(output_dir, serving_base_path)
    tflite_files = {
        key: os.path.join(path, "tflite", os.path.basename(p)) for key, p in tflite_files.items()
    }
    return ExportResult(version, path, signatures, tflite_files, report, metadata)


def _validation_set(validation, input_shape, gallery):
    if validation is None:
        if gallery is not None and gallery.inputs is not None:
            return np.asarray(gallery.inputs, "float32"), gallery.labels
        return None, None
    labels = None
    if isinstance(validation, (str, os.PathLike)):
        data = spec._load_npz(validation, "validation")
        labels = data.get("labels")
    inputs = spec.load_inputs(validation, input_shape, "validation")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(inputs),) or labels.dtype.kind not in "iu":
            raise ValueError(
                f"`validation` `labels` must be integers of shape ({len(inputs)},); got "
                f"{labels.dtype} {labels.shape}."
            )
    return inputs, labels


def _write_tflite(tmp_dir, variants, with_retrieval, representative):
    files = {}
    if not variants:
        return files
    directory = os.path.join(tmp_dir, "tflite")
    os.makedirs(directory)
    jobs = [("embedder", "serving_default")]
    if with_retrieval:
        jobs.append(("retrieve", "retrieve"))
    for variant in variants:
        for prefix, signature in jobs:
            try:
                content = tflite.convert_tflite(tmp_dir, variant, signature, representative)
            except Exception as error:
                raise RuntimeError(
                    f"TFLite conversion of `{signature}` to the {variant!r} variant failed: {error}"
                ) from error
            path = os.path.join(directory, f"{prefix}_{variant}.tflite")
            with open(path, "wb") as f:
                f.write(content)
            files[f"{prefix}_{variant}"] = path
    return files


def _parity(
    embedder, l2_normalize, saved_model_dir, tflite_files, inputs, labels, distance, latency_runs
):
    def reference(x):
        embeddings = np.asarray(embedder(x, training=False), "float32")
        if l2_normalize:
            norms = np.sqrt(np.maximum(np.sum(np.square(embeddings), axis=1, keepdims=True), 1e-12))
            embeddings = embeddings / norms
        return embeddings

    loaded = tf.saved_model.load(saved_model_dir)
    serving = loaded.signatures["serving_default"]

    def saved(x):
        return serving(inputs=tf.constant(x))["embeddings"].numpy()

    files = [os.path.join(saved_model_dir, n) for n in ("saved_model.pb", "variables")]
    runtimes = {"saved_model": (saved, files)}
    for key, path in tflite_files.items():
        if key.startswith("embedder_"):
            runner = tflite.LiteRTRunner(path)
            runtimes[key[len("embedder_") :]] = (
                lambda x, runner=runner: runner(inputs=x)["embeddings"],
                path,
            )
    return parity.parity_report(reference, runtimes, inputs, labels, distance, latency_runs)
