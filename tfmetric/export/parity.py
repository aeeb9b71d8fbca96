"""Parity of exported embedders with the Keras model they came from.

For each runtime (the SavedModel, each TFLite variant) on a validation set:
the largest absolute difference and the smallest cosine similarity between its
embeddings and the Keras ones, leave-one-out retrieval precision@1 and MAP@R
(`tfmetric.metrics`) next to the Keras values, the file size, and the median
CPU latency of a batch of 1 and of 32.

Targets (from the export's acceptance criteria): the SavedModel within `1e-5`
max |Δ|; float TFLite variants (`fp32`, `fp16`) within 0.005 MAP@R of Keras
(0.5 percentage points); integer variants (`dynamic_int8`, `int8`) within 0.02.

With a `verify` signature, the report also compares each runtime's `verify`
on the validation pairs: the largest score difference, and the share of pairs
whose `is_match` decision equals Keras' (targets: at least 99.5% for the
SavedModel, `fp32` and `fp16`; at least 98% for `dynamic_int8` and `int8`).
"""

import os
import time
import warnings

import numpy as np

from tfmetric._src import files, validation

__all__ = ["TARGETS", "ParityOptions", "format_report", "parity_report"]

TARGETS = {
    "saved_model": {"max_abs_diff": 1e-5},
    "fp32": {"map_at_r_drop": 0.005},
    "fp16": {"map_at_r_drop": 0.005},
    "dynamic_int8": {"map_at_r_drop": 0.02},
    "int8": {"map_at_r_drop": 0.02},
}


class ParityOptions:
    """How the parity report of an export is made.

    Args:
        latency_runs: Timed calls per batch size; `0` skips timing. Defaults
            to `10`.
        require: Abort the export (writing no version) if a target is
            missed. Defaults to `False`.

    Example:

    >>> tfmetric.export.ParityOptions(latency_runs=0, require=True)
    ParityOptions(latency_runs=0, require=True)
    """

    def __init__(self, latency_runs=10, require=False):
        if (
            isinstance(latency_runs, bool)
            or not isinstance(latency_runs, (int, np.integer))
            or latency_runs < 0
        ):
            raise ValueError(f"`latency_runs` must be an integer >= 0; got {latency_runs!r}.")
        self.latency_runs = int(latency_runs)
        self.require = validation.check_bool(require, "require")

    @classmethod
    def from_argument(cls, parity):
        if parity is None:
            return cls()
        if isinstance(parity, cls):
            return parity
        raise TypeError(
            f"`parity` must be None or a tfmetric.export.ParityOptions; got {parity!r}."
        )

    def __repr__(self):
        return f"ParityOptions(latency_runs={self.latency_runs!r}, require={self.require!r})"


VERIFY_TARGETS = {
    "saved_model": {"agreement": 0.995},
    "fp32": {"agreement": 0.995},
    "fp16": {"agreement": 0.995},
    "dynamic_int8": {"agreement": 0.98},
    "int8": {"agreement": 0.98},
}


def _in_batches(fn, inputs, batch_size=32):
    return np.concatenate(
        [
            np.asarray(fn(inputs[i : i + batch_size]), "float32")
            for i in range(0, len(inputs), batch_size)
        ]
    )


def _median_latency_ms(fn, inputs, batch, runs):
    if runs < 1:
        return None
    x = np.resize(inputs, (batch, *inputs.shape[1:])).astype("float32")
    fn(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _retrieval(embeddings, labels, distance, quiet=False):
    if labels is None:
        return None
    from tfmetric.metrics import evaluate_retrieval

    with warnings.catch_warnings():
        if quiet:  # Queries without relevant references: already reported for Keras.
            warnings.simplefilter("ignore", UserWarning)
        try:
            return evaluate_retrieval(
                embeddings, labels, distance=distance, metrics=["precision_at_1", "map_at_r"]
            )
        except ValueError:
            # No validation sample shares its label with another one.
            return None


def _path_size(path):
    if path is None:
        return None
    if isinstance(path, (list, tuple)):
        return sum(_path_size(p) for p in path)
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def parity_report(reference, runtimes, inputs, labels=None, distance="cosine", latency_runs=10):
    """Compares runtimes of an exported embedder with the reference (Keras).

    Args:
        reference: Callable mapping a float32 batch to embeddings (Keras).
        runtimes: Dict of runtime name (`"saved_model"`, `"fp16"`, ...) to
            `(callable, path)`; `path` (file or directory) gives the size.
        inputs: Validation inputs `(n, ...)` (float32).
        labels: Integer labels `(n,)` for the retrieval metrics, or `None`.
        distance: Distance of the retrieval metrics. Defaults to `"cosine"`.
        latency_runs: Timed calls per batch size (median reported); `0` skips
            latency. Defaults to `10`.

    Returns:
        A JSON-serialisable dict: `{"samples", "distance", "targets", "keras",
        "runtimes": {name: {...}}, "passed"}`. Each runtime entry holds
        `max_abs_diff`, `min_cosine`, `precision_at_1`, `map_at_r`,
        `map_at_r_drop` (Keras minus runtime), `size_bytes`,
        `latency_ms_batch_1`, `latency_ms_batch_32` and `passed` (its target
        met, `None` without a target or without labels).

    Example:

    >>> x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    >>> identity = lambda batch: batch
    >>> report = tfmetric.export.parity_report(
    ...     identity, {"copy": (identity, None)}, x, labels=np.arange(8) % 2, latency_runs=0)
    >>> report["runtimes"]["copy"]["max_abs_diff"], report["runtimes"]["copy"]["map_at_r_drop"]
    (0.0, 0.0)
    """
    from tfmetric import distances as distances_lib

    distance = distances_lib.get(distance)
    inputs = np.asarray(inputs, "float32")
    labels = None if labels is None else np.asarray(labels).astype("int64")
    expected = _in_batches(reference, inputs)
    keras_scores = _retrieval(expected, labels, distance)
    keras_entry = {
        "precision_at_1": keras_scores and keras_scores["precision_at_1"],
        "map_at_r": keras_scores and keras_scores["map_at_r"],
        "latency_ms_batch_1": _median_latency_ms(reference, inputs, 1, latency_runs),
        "latency_ms_batch_32": _median_latency_ms(reference, inputs, 32, latency_runs),
    }
    entries = {}
    for name, (fn, path) in runtimes.items():
        got = _in_batches(fn, inputs)
        norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
        cosine = np.sum(got * expected, axis=1) / np.maximum(norms, 1e-12)
        scores = _retrieval(got, labels, distance, quiet=True)
        entry = {
            "max_abs_diff": float(np.max(np.abs(got - expected))),
            "min_cosine": float(np.min(cosine)),
            "precision_at_1": scores and scores["precision_at_1"],
            "map_at_r": scores and scores["map_at_r"],
            "map_at_r_drop": None,
            "size_bytes": _path_size(path),
            "latency_ms_batch_1": _median_latency_ms(fn, inputs, 1, latency_runs),
            "latency_ms_batch_32": _median_latency_ms(fn, inputs, 32, latency_runs),
        }
        if scores and keras_scores:
            entry["map_at_r_drop"] = keras_scores["map_at_r"] - scores["map_at_r"]
        entry["passed"] = _passed(TARGETS.get(name, {}), entry)
        entries[name] = entry
    verdicts = [e["passed"] for e in entries.values() if e["passed"] is not None]
    return {
        "samples": int(len(inputs)),
        "labelled": labels is not None,
        "distance": distances_lib.serialize(distance),
        "targets": {name: TARGETS[name] for name in entries if name in TARGETS},
        "keras": keras_entry,
        "runtimes": entries,
        "passed": all(verdicts) if verdicts else None,
    }


def _passed(target, entry):
    checks = []
    if "max_abs_diff" in target:
        checks.append(entry["max_abs_diff"] <= target["max_abs_diff"])
    if "map_at_r_drop" in target and entry["map_at_r_drop"] is not None:
        checks.append(entry["map_at_r_drop"] <= target["map_at_r_drop"])
    return all(checks) if checks else None


def add_verify_parity(report, verify, runtimes, x1, x2, same, batch_size=32):
    """Adds the `verify` section to a parity report (and folds it into `passed`).

    Args:
        report: A report from `parity_report`.
        verify: The export's `VerifyPlan` (Keras scores and decisions).
        runtimes: Dict of runtime name to a callable `(x1, x2) -> (score,
            is_match)` (numpy arrays).
        x1, x2: The validation pairs' inputs.
        same: Booleans `(pairs,)`: whether each pair matches.

    Returns:
        The report, with `report["verify"]` = `{"pairs", "threshold",
        "targets", "keras": {"accuracy"}, "runtimes": {name: {"max_abs_diff",
        "agreement", "accuracy", "passed"}}}`.
    """
    expected = verify.score_numpy(x1, x2)
    decisions = verify.decide(expected)
    entries = {}
    for name, fn in runtimes.items():
        parts = [
            fn(x1[i : i + batch_size], x2[i : i + batch_size])
            for i in range(0, len(x1), batch_size)
        ]
        scores = np.concatenate([np.asarray(p[0], "float32").reshape(-1) for p in parts])
        matches = np.concatenate([np.asarray(p[1]).reshape(-1) for p in parts]).astype(bool)
        entry = {
            "max_abs_diff": float(np.max(np.abs(scores - expected))),
            "agreement": float(np.mean(matches == decisions)),
            "accuracy": float(np.mean(matches == same)),
        }
        target = VERIFY_TARGETS.get(name)
        entry["passed"] = None if target is None else entry["agreement"] >= target["agreement"]
        entries[name] = entry
    report["verify"] = {
        "pairs": int(len(same)),
        "threshold": verify.threshold,
        "targets": {name: VERIFY_TARGETS[name] for name in entries if name in VERIFY_TARGETS},
        "keras": {"accuracy": float(np.mean(decisions == same))},
        "runtimes": entries,
    }
    verdicts = [e["passed"] for e in entries.values() if e["passed"] is not None]
    if verdicts:
        previous = report["passed"]
        report["passed"] = all(verdicts) and previous is not False
    return report


def _distance_label(distance):
    """A short name of a serialized distance: `"cosine"`, `"Minkowski"`, `"LearnedDistance(WeightedL1)"`."""
    if not isinstance(distance, dict):
        return str(distance)
    name = distance.get("class_name", "?")
    layer = (distance.get("config") or {}).get("layer")
    if isinstance(layer, dict):
        name += f"({layer.get('class_name', '?')})"
    return name


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_report(report):
    """Renders a parity report as a plain-text table."""
    header = (
        f"{'runtime':<14}{'max|Δ|':>10}{'min cos':>10}{'P@1':>8}{'MAP@R':>8}{'ΔMAP@R':>9}"
        f"{'size KiB':>10}{'ms@1':>8}{'ms@32':>8}  target"
    )
    keras = report["keras"]
    lines = [
        f"Parity vs Keras on {report['samples']} samples "
        f"(distance: {_distance_label(report['distance'])})",
        header,
        f"{'keras':<14}{'-':>10}{'-':>10}{_fmt(keras['precision_at_1'], '.4f'):>8}"
        f"{_fmt(keras['map_at_r'], '.4f'):>8}{'-':>9}{'-':>10}"
        f"{_fmt(keras['latency_ms_batch_1'], '.2f'):>8}{_fmt(keras['latency_ms_batch_32'], '.2f'):>8}",
    ]
    verdict = {True: "ok", False: "MISSED", None: "-"}
    for name, e in report["runtimes"].items():
        size = None if e["size_bytes"] is None else e["size_bytes"] / 1024
        lines.append(
            f"{name:<14}{_fmt(e['max_abs_diff'], '.2e'):>10}{_fmt(e['min_cosine'], '.6f'):>10}"
            f"{_fmt(e['precision_at_1'], '.4f'):>8}{_fmt(e['map_at_r'], '.4f'):>8}"
            f"{_fmt(e['map_at_r_drop'], '+.4f'):>9}{_fmt(size, '.1f'):>10}"
            f"{_fmt(e['latency_ms_batch_1'], '.2f'):>8}{_fmt(e['latency_ms_batch_32'], '.2f'):>8}"
            f"  {verdict[e['passed']]}"
        )
    section = report.get("verify")
    if section:
        lines += [
            "",
            f"verify on {section['pairs']} validation pairs (threshold "
            f"{section['threshold']:.6g}; Keras accuracy {section['keras']['accuracy']:.4f})",
            f"{'runtime':<14}{'max|Δ|':>10}{'agree':>8}{'accuracy':>10}  target",
        ]
        for name, e in section["runtimes"].items():
            lines.append(
                f"{name:<14}{_fmt(e['max_abs_diff'], '.2e'):>10}{e['agreement']:>8.4f}"
                f"{e['accuracy']:>10.4f}  {verdict[e['passed']]}"
            )
    return "\n".join(lines)


def write_report(report, path):
    """Writes the report as JSON, atomically."""
    files.write_json(path, report)
