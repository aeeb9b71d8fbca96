"""Exports a trained embedder for TF Serving and TFLite, with a parity report.

Usage:
  python -m export --model=PATH.keras --output=DIR [--name=NAME]
      [--gallery=PATH.npz] [--tflite=fp32,fp16,dynamic_int8,int8]
      [--representative=PATH.npz] [--validation=PATH.npz] ...

Writes DIR/NAME/<next version>/ atomically (SavedModel with the signatures
serving_default, embed_images for image models, retrieve and retrieve_images
with a gallery, verify and verify_images for Siamese models; warm-up requests;
metadata; TFLite files; parity.json), refreshes DIR/models.config (one that
tfmetric did not write is left as it is, with a warning if it lacks the model)
and prints the parity table. Exits with status 1 and writes nothing on bad input. All the work
is done by tfmetric.export.export_for_serving.
"""

import os
import sys
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "model",
    None,
    "Path of the trained .keras model. A model with an `embedder` "
    "attribute (tfmetric ProxyModel, SiameseModel, TripletModel) is exported "
    "through it; otherwise the model must map one float input to (batch, dim).",
)
flags.DEFINE_string(
    "output",
    None,
    "Models directory: absent, empty, or holding TF Serving model "
    "bases (DIR/NAME/<integer version>/) and models.config.",
)
flags.DEFINE_string("name", None, "Served model name. Defaults to the .keras file stem.")
flags.DEFINE_string(
    "gallery",
    None,
    "Optional .npz baked into the `retrieve` signatures: "
    "`embeddings` (n, dim) or `inputs` (n, ...) to embed, plus optional `ids` "
    "(n,) ints or strings and integer `labels` (n,).",
)
flags.DEFINE_string(
    "distance",
    None,
    "Distance of retrieval and parity metrics (a "
    "tfmetric.distances name). Defaults to the model's `distance`, else cosine.",
)
flags.DEFINE_integer(
    "top_k", 10, "Gallery items returned by `retrieve` (capped at the gallery size).", lower_bound=1
)
flags.DEFINE_boolean("l2_normalize", False, "L2-normalise the exported embeddings.")
flags.DEFINE_integer(
    "image_height",
    None,
    "embed_images: height the images are resized to. Defaults to the model input height.",
)
flags.DEFINE_integer(
    "image_width",
    None,
    "embed_images: width the images are resized to. Defaults to the model input width.",
)
flags.DEFINE_integer(
    "image_channels",
    None,
    "embed_images: 1 (grayscale) or 3 (RGB). Defaults to the model input channels.",
)
flags.DEFINE_enum(
    "image_scaling",
    None,
    ["unit", "symmetric", "raw", "imagenet"],
    "embed_images: pixel scaling from [0, 255]: unit -> [0, 1], symmetric -> "
    "[-1, 1], raw -> unchanged, imagenet -> [0, 1] then ImageNet mean/std. "
    "Defaults to the scaling recorded in the .keras file (the main job's models: raw), "
    "else unit.",
)
flags.DEFINE_enum(
    "verify",
    "auto",
    ["auto", "yes", "no"],
    "Add the `verify` signatures (two inputs -> score and is_match at a threshold "
    "calibrated on the --validation pairs): auto = for Siamese models only.",
)
flags.DEFINE_float(
    "verify_threshold",
    None,
    "Decision threshold of `verify` (adds the `verify` signatures unless --verify=no). "
    "Defaults to the one calibrated on the validation pairs.",
)
flags.DEFINE_list(
    "tflite",
    [],
    "TFLite variants to write: fp32, fp16, dynamic_int8, int8 "
    "(full-integer, calibrated on --representative).",
)
flags.DEFINE_boolean(
    "tflite_retrieval",
    True,
    "With --gallery, also write retrieve_<variant>.tflite with the baked-in exact search.",
)
flags.DEFINE_string(
    "representative",
    None,
    ".npz with `inputs` to calibrate the int8 variant. "
    "Defaults to the validation or gallery inputs.",
)
flags.DEFINE_string(
    "validation",
    None,
    ".npz with `inputs` and optional integer `labels` (and optional "
    "verification pairs `x1`, `x2`, `same`) for the parity report and the `verify` "
    "threshold. Defaults to the gallery inputs and labels, then the "
    "representative set, then random inputs.",
)
flags.DEFINE_string(
    "serving_base_path",
    "/models",
    "Where TF Serving sees --output (the container mount point), written into models.config.",
)
flags.DEFINE_integer(
    "latency_runs",
    10,
    "Timed calls per batch size in the parity report; 0 skips timing.",
    lower_bound=0,
)
flags.DEFINE_boolean(
    "require_parity",
    False,
    "Fail, writing no version, if a parity target is "
    "missed (SavedModel max|diff| <= 1e-5, fp16 MAP@R within 0.005, int8 within "
    "0.02; verify decisions agreeing on >= 99.5% of pairs, 98% for int8).",
)
flags.mark_flags_as_required(["model", "output"])


def _image_spec(export):
    """`None` (from the model) or the spec the image flags give, completed by the model input."""
    given = (FLAGS.image_height, FLAGS.image_width, FLAGS.image_channels, FLAGS.image_scaling)
    if all(value is None for value in given):
        return None
    _, input_shape, _ = export.resolve_embedder(FLAGS.model)
    if FLAGS.image_scaling is None:
        given = (*given[:3], export.recorded_image_scaling(FLAGS.model))
    spec = export.ImageSpec.for_input_shape(input_shape, *given)
    if spec is None:
        raise ValueError(
            f"The image flags were given, but the model input {input_shape} is not an image."
        )
    return spec


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from tfmetric import export
    from tfmetric._src import files

    def show_warning(message, *args, **kwargs):
        print(f"export: warning: {message}", file=sys.stderr)

    warnings.showwarning = show_warning

    try:
        problem = files.directory_problem(FLAGS.output)
        if problem is not None:
            raise ValueError(f"`--output={FLAGS.output}` cannot be written: {problem}.")
        verify = {"auto": None, "yes": True, "no": False}[FLAGS.verify]
        if FLAGS.verify_threshold is not None:
            if FLAGS.verify == "no":
                raise ValueError("--verify_threshold was given with --verify=no.")
            verify = export.VerifyOptions(threshold=FLAGS.verify_threshold)
        result = export.export_for_serving(
            FLAGS.model,
            FLAGS.output,
            name=FLAGS.name,
            distance=FLAGS.distance,
            l2_normalize=FLAGS.l2_normalize,
            image_spec=_image_spec(export),
            gallery=FLAGS.gallery,
            top_k=FLAGS.top_k,
            validation=FLAGS.validation,
            verify=verify,
            tflite=export.TFLiteOptions(
                FLAGS.tflite,
                retrieval=FLAGS.tflite_retrieval,
                representative=FLAGS.representative,
            ),
            parity=export.ParityOptions(
                latency_runs=FLAGS.latency_runs, require=FLAGS.require_parity
            ),
            serving_base_path=FLAGS.serving_base_path,
        )
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 1
    print(f"Exported version {result.version} to {result.path}")
    print(f"Signatures: {', '.join(result.signatures)}")
    for path in result.tflite.values():
        print(f"TFLite: {path}")
    print(export.format_report(result.report))
    return 0


if __name__ == "__main__":
    app.run(main)
