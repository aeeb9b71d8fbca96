"""Versioned, atomic exports in the TF Serving layout.

```
OUTPUT/
  models.config                       # model_config_list of every model in OUTPUT
  NAME/
    1/                                # a complete SavedModel version
      saved_model.pb  variables/  fingerprint.pb
      assets/tfmetric_export.json     # metadata
      assets.extra/tf_serving_warmup_requests
      tflite/embedder_fp32.tflite ... # optional, with retrieve_ and verify_<variant>.tflite
      parity.json                     # parity report
    2/ ...
```

Everything of a version is written into a hidden temporary directory inside
`OUTPUT/NAME` (TF Serving only loads integer-named directories) and renamed to
the next integer when complete, so an interrupted export never leaves a version
that TF Serving would load. Temporary directories left by killed exports are
removed by the next export.
"""

import os
import re
import shutil
import warnings

import numpy as np
import tensorflow as tf

from tfmetric._src import files
from tfmetric._src import validation as checks
from tfmetric.export import parity as parity_lib
from tfmetric.export import saved_model, tflite, warmup
from tfmetric.export.plan import plan_export

__all__ = ["ExportResult", "export_for_serving", "next_version"]

MODELS_CONFIG = "models.config"
MODELS_CONFIG_HEADER = (
    "# Written by tfmetric.export: rewritten by every export into this directory.\n"
    "# Delete these two lines to keep your edits: tfmetric then leaves the file as it is.\n"
)
# `models.config` as tfmetric wrote it before the header existed.
_UNMARKED_OWN_CONFIG = re.compile(
    r'model_config_list \{\n(  config \{\n    name: "[^"\n]*"\n    base_path: "[^"\n]*"\n'
    r'    model_platform: "tensorflow"\n  \}\n)*\}\n\Z'
)
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
        (_is_version(entry) or files.is_temporary(entry))
        and os.path.isdir(os.path.join(path, entry))
        for entry in os.listdir(path)
    )


def _check_output(output_dir, name):
    """Raises unless `output_dir` is absent, empty or a TF Serving models directory."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"`output` {output_dir!r} exists and is not a directory.")
    problem = files.directory_problem(output_dir)
    if problem is not None:
        raise ValueError(f"`output` {output_dir!r} cannot be written: {problem}.")
    if not os.path.exists(output_dir):
        return
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
        if files.is_temporary(entry):
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


def _publish(tmp_dir, base_dir):
    """Renames the finished temporary directory to the next free version."""
    while True:
        version = next_version(base_dir)
        target = os.path.join(base_dir, str(version))
        if os.path.exists(target):
            continue
        try:
            files.publish_directory(tmp_dir, target)
        except OSError:
            if os.path.exists(target):
                continue  # Another export took this version first.
            raise
        return version, target


def _is_own_models_config(text):
    """Whether `models.config` text was written by tfmetric and not edited since."""
    return text.startswith(MODELS_CONFIG_HEADER.splitlines()[0]) or bool(
        _UNMARKED_OWN_CONFIG.match(text)
    )


def write_models_config(output_dir, serving_base_path="/models"):
    """Writes `models.config` listing every model base in `output_dir` (atomically).

    The file starts with a header comment saying tfmetric wrote it. A file
    with that header (or exactly as earlier tfmetric versions wrote it) is
    rewritten; any other `models.config` is the user's (a version policy,
    models elsewhere) and is left untouched: if it does not list a model base
    of `output_dir`, a `UserWarning` names the missing ones.

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
    base = serving_base_path.rstrip("/")
    path = os.path.join(output_dir, MODELS_CONFIG)
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if not _is_own_models_config(text):
            listed = set(re.findall(r'\bname\s*:\s*"([^"]*)"', text))
            missing = [name for name in names if name not in listed]
            if missing:
                warnings.warn(
                    f"{path} was not written by tfmetric (no {MODELS_CONFIG_HEADER.split(':')[0]!r} "
                    f"header), so it was left as it is, but it does not list {missing}: add a "
                    f"config entry for each (base_path \"{base}/<name>\"), or delete the file to "
                    "have tfmetric write it.",
                    UserWarning,
                    stacklevel=2,
                )
            return path
    configs = "".join(
        "  config {\n"
        f'    name: "{name}"\n'
        f'    base_path: "{base}/{name}"\n'
        '    model_platform: "tensorflow"\n'
        "  }\n"
        for name in names
    )
    files.write_text(path, f"{MODELS_CONFIG_HEADER}model_config_list {{\n{configs}}}\n")
    return path


def export_for_serving(
    model,
    output_dir,
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
    serving_base_path="/models",
):
    """Exports a model as the next version of a TF Serving model, atomically.

    Resolves everything into one `tfmetric.export.ExportPlan` first
    (`plan_export`: all input is checked before anything is written), then
    writes `output_dir/name/<version>/` (the SavedModel with warm-up requests
    and metadata), the TFLite files and a parity report inside it, and
    refreshes `output_dir/models.config` (unless the user edited it: see
    `write_models_config`).

    Args:
        model: A `keras.Model` or the path of a `.keras` file; a model with an
            `embedder` attribute (tfmetric's `SiameseModel`, `TripletModel`,
            `ProxyModel`) is exported through it.
        output_dir: The models directory (absent, empty or holding TF Serving
            model bases).
        name: The served model name. Defaults to the `.keras` file stem, or the
            model name.
        distance: Distance of `retrieve`, of the parity metrics and of
            `verify` for embedders. Defaults to the distance the model was
            trained with (`tfmetric.export.trained_distance`: a Siamese
            model's learned head or distance, the compiled loss's distance,
            the model's `distance`), else `"cosine"`.
        l2_normalize: L2-normalise the exported embeddings. Defaults to `False`.
        image_spec: The `tfmetric.export.ImageSpec` of the `*_images`
            signatures (used as given); `None` derives it from an image
            model's input shape, with the scaling recorded in the `.keras`
            file (`tfmetric.export.record_image_scaling`: the main job's
            models take 0..255 pixels, `"raw"`), else `"unit"`; `False`
            leaves them out.
        gallery: `None`, an `.npz` path, a dict or a `tfmetric.export.Gallery`
            with `embeddings` (or `inputs`) and optional `ids` and integer
            `labels`; adds the `retrieve` signatures.
        top_k: Gallery items returned by `retrieve`. Defaults to `10`.
        validation: Held-out data, in memory: a `tfmetric.export.ValidationData`,
            a tuple `(inputs, labels)`, an array of inputs, a dict, or an
            `.npz` path (`inputs`, optional `labels`; optional pairs `x1`,
            `x2`, `same`). It gives the parity report its inputs, the `int8`
            calibration (by default) and the `verify` threshold. Defaults to
            the gallery inputs and labels, then the representative set, then
            64 uniform random inputs.
        verify: Add the `verify` signatures: `None` (for Siamese models
            only), `True`, `False`, or a `tfmetric.export.VerifyOptions`
            (given threshold, calibration metric).
        tflite: TFLite files: a `tfmetric.export.TFLiteOptions`, or variant
            names among `"fp32"`, `"fp16"`, `"dynamic_int8"`, `"int8"` (a list
            or a comma-separated string). Defaults to none.
        parity: A `tfmetric.export.ParityOptions` (latency runs, whether a
            missed target aborts the export). Defaults to `ParityOptions()`.
        serving_base_path: Where TF Serving sees `output_dir`, for
            `models.config`. Defaults to `"/models"`.

    Returns:
        An `ExportResult`.

    Raises:
        FileNotFoundError: for a missing model, gallery or data file.
        ValueError: for a model that is not an embedding model, a gallery of
            the wrong dimension, an output that is not a TF Serving base, bad
            arguments, or (with `ParityOptions(require=True)`) a missed parity
            target.
        RuntimeError: if a TFLite conversion fails (no version is written).

    Example:

    >>> import keras, tempfile
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="tiny")
    >>> out = tempfile.mkdtemp()
    >>> quiet = tfmetric.export.ParityOptions(latency_runs=0)
    >>> tfmetric.export.export_for_serving(model, out, parity=quiet).version
    1
    >>> tfmetric.export.export_for_serving(model, out, parity=quiet).version
    2
    """
    checks.check_tensorflow_backend("`tfmetric.export.export_for_serving`")
    output_dir = os.fspath(output_dir)
    plan = plan_export(
        model,
        name=name,
        distance=distance,
        l2_normalize=l2_normalize,
        image_spec=image_spec,
        gallery=gallery,
        top_k=top_k,
        validation=validation,
        verify=verify,
        tflite=tflite,
        parity=parity,
    )
    if not isinstance(serving_base_path, str) or not serving_base_path.strip():
        raise TypeError(
            f"`serving_base_path` must be a non-empty path string; got {serving_base_path!r}."
        )
    if not isinstance(plan.name, str) or not _NAME_PATTERN.match(plan.name):
        raise ValueError(
            f"`name` must be letters, digits, '_', '-' or '.', starting with a letter or "
            f"digit; got {plan.name!r}."
        )
    _check_output(output_dir, plan.name)

    base_dir = os.path.join(output_dir, plan.name)
    os.makedirs(base_dir, exist_ok=True)
    tmp_dir = files.make_temporary_directory(base_dir)
    try:
        metadata = saved_model.write_saved_model(plan, tmp_dir)
        sample = plan.validation.inputs[:1]
        warmup.write_warmup_requests(
            tmp_dir, plan.name, warmup.warmup_inputs(plan.signatures, sample, plan.image_spec)
        )
        tflite_files = _write_tflite(tmp_dir, plan)
        report = _parity(plan, tmp_dir, tflite_files)
        parity_lib.write_report(report, os.path.join(tmp_dir, "parity.json"))
        if plan.parity.require and report["passed"] is False:
            raise ValueError(
                "The export missed a parity target (`ParityOptions(require=True)`); no version "
                "was written.\n" + parity_lib.format_report(report)
            )
        version, path = _publish(tmp_dir, base_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    write_models_config(output_dir, serving_base_path)
    tflite_files = {
        key: os.path.join(path, "tflite", os.path.basename(p)) for key, p in tflite_files.items()
    }
    return ExportResult(version, path, plan.signature_names, tflite_files, report, metadata)


def _write_tflite(tmp_dir, plan):
    files = {}
    if not plan.tflite:
        return files
    directory = os.path.join(tmp_dir, "tflite")
    os.makedirs(directory)
    loaded = tf.saved_model.load(tmp_dir)  # once for every variant
    for target in plan.tflite:
        try:
            content = tflite.convert_loaded(
                loaded, target.variant, target.signature, plan.representative_for(target.signature)
            )
        except Exception as error:
            raise RuntimeError(
                f"TFLite conversion of `{target.signature}` to the {target.variant!r} variant "
                f"failed: {error}"
            ) from error
        path = os.path.join(directory, target.filename)
        with open(path, "wb") as f:
            f.write(content)
        files[target.key] = path
    return files


def _parity(plan, saved_model_dir, tflite_files):
    def reference(x):
        return np.asarray(plan.embed(x), "float32")

    loaded = tf.saved_model.load(saved_model_dir)
    serving = loaded.signatures["serving_default"]

    def saved(x):
        return serving(inputs=tf.constant(x))["embeddings"].numpy()

    files = [os.path.join(saved_model_dir, n) for n in ("saved_model.pb", "variables")]
    runtimes = {"saved_model": (saved, files)}
    verify_runtimes = {}
    if plan.verify is not None:
        verify_signature = loaded.signatures["verify"]

        def saved_verify(x1, x2):
            out = verify_signature(x1=tf.constant(x1), x2=tf.constant(x2))
            return out["score"].numpy(), out["is_match"].numpy()

        verify_runtimes["saved_model"] = saved_verify
    for target in plan.tflite:
        path = tflite_files[target.key]
        runner = tflite.LiteRTRunner(path)
        if target.prefix == "embedder":
            runtimes[target.variant] = (
                lambda x, runner=runner: runner(inputs=x)["embeddings"],
                path,
            )
        elif target.prefix == "verify":

            def run_verify(x1, x2, runner=runner):
                out = runner(x1=x1, x2=x2)
                return out["score"], out["is_match"]

            verify_runtimes[target.variant] = run_verify
    validation = plan.validation
    report = parity_lib.parity_report(
        reference,
        runtimes,
        validation.inputs,
        validation.labels,
        plan.distance,
        plan.parity.latency_runs,
    )
    if plan.verify is not None:
        pairs = validation.verification_pairs()
        if pairs is not None:
            report = parity_lib.add_verify_parity(report, plan.verify, verify_runtimes, *pairs)
    return report
