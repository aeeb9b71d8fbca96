"""Export embedders for serving: SavedModel (TF Serving), TFLite (LiteRT), parity reports.

`export_for_serving` is the whole stage (what `python -m export` runs): a
versioned, atomic TF Serving export with image decoding and exact retrieval in
the graph, TFLite variants and a parity report. The other functions are its
parts.
"""

from tfmetric.export.parity import TARGETS, format_report, parity_report
from tfmetric.export.saved_model import METADATA_FILENAME, exact_search, save_embedder
from tfmetric.export.serving_layout import (
    ExportResult,
    export_for_serving,
    next_version,
    write_models_config,
)
from tfmetric.export.spec import (
    Gallery,
    ImageSpec,
    load_gallery,
    load_inputs,
    load_keras_file,
    resolve_embedder,
)
from tfmetric.export.tflite import VARIANTS, LiteRTRunner, convert_tflite
from tfmetric.export.warmup import WARMUP_FILENAME, predict_log_record, write_warmup_requests

__all__ = [
    "METADATA_FILENAME",
    "TARGETS",
    "VARIANTS",
    "WARMUP_FILENAME",
    "ExportResult",
    "Gallery",
    "ImageSpec",
    "LiteRTRunner",
    "convert_tflite",
    "exact_search",
    "export_for_serving",
    "format_report",
    "load_gallery",
    "load_inputs",
    "load_keras_file",
    "next_version",
    "parity_report",
    "predict_log_record",
    "resolve_embedder",
    "save_embedder",
    "write_models_config",
    "write_warmup_requests",
]
