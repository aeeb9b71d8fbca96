"""Time to quality of the trainer's main job (`python -m trainers.train` defaults).

Each configuration runs `trainers.run(RunConfig(...))` in a fresh process (so
its compile time and CPU time are its own) and records, per epoch, the
held-out MAP@R the `RetrievalEvaluation` callback reports (inference mode, the
numbers users see in their curves) and the seconds since training started.
The table gives the time at which held-out MAP@R first reaches the target,
the training time, the whole run (export included when on), the process's
wall and CPU seconds and the machine's load average.

    python benchmarks/time_to_quality.py                  # defaults, export on
    python benchmarks/time_to_quality.py --compare        # also BN momentum 0.99 (Keras default)
    python benchmarks/time_to_quality.py --epochs 10 --no-export --write
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import _results  # benchmarks/_results.py, beside this script

HEADING = "## Time to quality (trainer main job)"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
args = json.loads(sys.argv[1])
import keras
import trainers
from trainers import job
from trainers import backbones

def _cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

IMPORT = {"wall": time.time() - args["launched"], "cpu": _cpu()}
PHASES = {}
_stack = []


def _timed(owner, attr, phase):
    # Exclusive wall and CPU seconds per phase (a nested timed call is its own phase's).
    function = getattr(owner, attr)

    def wrapper(*a, **k):
        frame = [time.time(), _cpu(), 0.0, 0.0]
        _stack.append(frame)
        try:
            return function(*a, **k)
        finally:
            _stack.pop()
            wall, cpu = time.time() - frame[0], _cpu() - frame[1]
            entry = PHASES.setdefault(phase, [0.0, 0.0, 0])
            entry[0] += wall - frame[2]
            entry[1] += cpu - frame[3]
            entry[2] += 1
            if _stack:
                _stack[-1][2] += wall
                _stack[-1][3] += cpu

    setattr(owner, attr, wrapper)


if args["phases"]:
    from tfmetric.export import serving_layout, tflite
    from trainers import distribution, evaluation, exporting, outputs, pipeline, protocols
    from trainers import losses as trainer_losses

    _timed(distribution, "make_strategy", "strategy")
    _timed(protocols, "load_and_split", "data (load + split)")
    for owner, attr in ((trainer_losses, "build"), (backbones, "build_embedder"),
                        (job, "make_optimizer"), (job, "build_training_model")):
        _timed(owner, attr, "model build")
    _timed(pipeline, "training_data", "input pipeline")
    _timed(keras.Model, "fit", "train (fit; first step compiles)")
    _timed(keras.callbacks.BackupAndRestore, "on_epoch_end", "train: checkpoints")
    _timed(keras.callbacks.TensorBoard, "on_epoch_end", "train: TensorBoard")
    _held_out = job._held_out_retrieval_class()
    _timed(_held_out, "on_epoch_end", "train: held-out MAP@R per epoch")
    job._held_out_retrieval_class = lambda: _held_out
    _timed(keras.Model, "save", "save model.keras")
    _timed(job, "embed", "evaluation")
    for attr in ("evaluate", "sample_pairs", "pair_verification", "few_shot",
                 "nearest_neighbors"):
        _timed(evaluation, attr, "evaluation")
    import tfmetric.metrics

    _timed(tfmetric.metrics, "paired_distances", "evaluation")
    for attr in ("plot_training_curves", "plot_projection", "plot_roc", "plot_neighbors"):
        _timed(outputs, attr, "plots")
    _timed(outputs, "write_projector", "projector")
    _timed(exporting, "export", "export: plan, warm-up, publish")
    _timed(tflite, "convert_loaded", "export: TFLite conversions")
    from tfmetric.export import saved_model

    _timed(saved_model, "write_saved_model", "export: SavedModel")
    _timed(serving_layout, "_parity", "export: parity")
if args["momentum"] is not None:
    backbones.BN_MOMENTUM = args["momentum"]
    _build = backbones.build_embedder

    def build_embedder(*a, **k):
        model = _build(*a, **k)
        backbones.set_batch_norm_momentum(model, args["momentum"])
        return model

    backbones.build_embedder = build_embedder

times = []


class _Timed(keras.callbacks.CSVLogger):
    def on_train_begin(self, logs=None):
        self._start = time.time()
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        times.append(time.time() - self._start)
        super().on_epoch_end(epoch, logs)


keras.callbacks.CSVLogger = _Timed
started = time.time()
config = trainers.RunConfig(**args["config"])
report = trainers.run(config)
history = job.read_history(os.path.join(config.model_dir, "history.csv"))
print("RESULT" + json.dumps({
    "map_at_r": history.get("val_map_at_r", []),
    "epoch_end_s": times,
    "train_s": report["train_seconds"],
    "total_s": report["total_seconds"],
    "final_map_at_r": report["held_out"]["model"]["map_at_r"],
    "run_s": time.time() - started,
    "import": IMPORT,
    "phases": PHASES,
    "process_cpu_s": _cpu(),
    "process_wall_s_inside": time.time() - args["launched"],
}))
"""


def _loadavg():
    return os.getloadavg()[0]


def measure(config, momentum, phases=False):
    """Runs one configuration in a child process; returns its numbers."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = _loadavg()
    started = time.time()
    child_args = {"config": config, "momentum": momentum, "phases": phases, "launched": started}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(child_args)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode or not line:
        raise RuntimeError(f"run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(line[-1][len("RESULT") :])
    out["process_wall_s"] = wall
    out["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out["load"] = (load_before, _loadavg())
    return out


def first_reaching(values, times, target):
    for epoch, (value, seconds) in enumerate(zip(values, times, strict=True), start=1):
        if value >= target:
            return epoch, seconds
    return None, None


def table(rows, target):
    lines = [
        f"| setting | epochs × steps | held-out MAP@R per epoch (inference mode) | epoch reaching "
        f"{target} | s to reach it | train s | run s (incl. export) | process wall s | "
        f"process CPU s | load avg (start/end) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, epochs, r in rows:
        epoch, seconds = first_reaching(r["map_at_r"], r["epoch_end_s"], target)
        curve = " ".join(f"{v:.3f}" for v in r["map_at_r"])
        lines.append(
            f"| {name} | {epochs} | {curve} | {epoch or 'never'} | "
            f"{'-' if seconds is None else f'{seconds:.1f}'} | {r['train_s']:.1f} | "
            f"{r['total_s']:.1f} | {r['process_wall_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |"
        )
    return "\n".join(lines)


def phase_table(result):
    """Wall and CPU seconds per phase of one run (exclusive: nested phases are their own)."""
    lines = ["| phase | calls | wall s | CPU s |", "|---|---:|---:|---:|"]
    imp = result["import"]
    lines.append(f"| start-up (Python, TensorFlow, Keras, tfmetric imports) | 1 | "
                 f"{imp['wall']:.1f} | {imp['cpu']:.1f} |")  # fmt: skip
    wall, cpu = imp["wall"], imp["cpu"]
    for name, (w, c, calls) in result["phases"].items():
        lines.append(f"| {name} | {calls} | {w:.1f} | {c:.1f} |")
        wall, cpu = wall + w, cpu + c
    rest_wall = result["process_wall_s_inside"] - wall
    rest_cpu = result["process_cpu_s"] - cpu
    lines.append(
        f"| everything else (reports, tables, outputs) | - | {rest_wall:.1f} | {rest_cpu:.1f} |"
    )
    lines.append(f"| **whole process** | | **{result['process_wall_s_inside']:.1f}** | "
                 f"**{result['process_cpu_s']:.1f}** |")  # fmt: skip
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: the trainer's")
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also run with BatchNormalization momentum 0.99 (Keras' default)",
    )
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument(
        "--phases",
        action="store_true",
        help="also time each phase of the run (wall and CPU seconds)",
    )
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()

    sys.path.insert(0, ROOT)
    from trainers.config import defaults

    rows = []
    from trainers.backbones import BN_MOMENTUM

    settings = [(f"defaults (BN momentum {BN_MOMENTUM})", None)]
    if args.compare:
        settings.append(("BN momentum 0.99 (Keras default, before)", 0.99))
    for name, momentum in settings:
        with tempfile.TemporaryDirectory() as tmp:
            config = {"model_dir": os.path.join(tmp, "run"), "export": not args.no_export}
            if args.epochs:
                config["epochs"] = args.epochs
            if args.steps_per_epoch:
                config["steps_per_epoch"] = args.steps_per_epoch
            epochs = config.get("epochs", defaults()["epochs"])
            steps = config.get("steps_per_epoch", defaults()["steps_per_epoch"])
            result = measure(config, momentum, args.phases)
            rows.append(
                (name + ("" if config["export"] else ", no export"), f"{epochs} × {steps}", result)
            )
            print(f"{name}: {json.dumps(result)}", flush=True)
    cpu = platform.processor() or platform.machine()
    header = (
        f"`python benchmarks/time_to_quality.py {' '.join(sys.argv[1:])}`: the trainer's default "
        f"run (digits, small CNN, semi-hard triplet loss, batches of 10 classes × 8) in a fresh process. "
        f"Machine: {cpu}, {os.cpu_count()} cores, shared with other sessions (load average "
        f"shown; wall times are pessimistic, CPU seconds less so)."
    )
    text = header + "\n\n" + table(rows, args.target) + "\n"
    if args.phases:
        text += f"\nPhases of the first run ({rows[0][0]}):\n\n" + phase_table(rows[0][2]) + "\n"
    print(text)
    if args.write:
        _results.replace_section(HEADING, f"{HEADING}\n\n{text}")


if __name__ == "__main__":
    main()
