"""The main job's run configuration, `run(config)` from Python, and TF_CONFIG checks."""

import json
import os
import subprocess
import sys

import pytest
from absl import flags

import trainers
from trainers import distribution, outputs, train  # noqa: F401  (defines the flags)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_flags_and_config_share_names_and_defaults():
    flags.FLAGS(["train"])
    try:
        from_flags = trainers.RunConfig.from_flags(flags.FLAGS)
    finally:
        flags.FLAGS.unparse_flags()
    assert from_flags == trainers.RunConfig()
    flags.FLAGS(["train", "--loss_arg=soft_margin=True", "--loss_arg=mining=hard", "--epochs=3"])
    try:
        parsed = trainers.RunConfig.from_flags(flags.FLAGS)
    finally:
        flags.FLAGS.unparse_flags()
    assert parsed.loss_args == {"soft_margin": True, "mining": "hard"} and parsed.epochs == 3


def test_former_siamese_head_flag_sets_the_pair_scorer():
    for scorer_flag in ("--siamese_head=weighted_l1", "--pair_scorer=weighted_l1"):
        argv = ["train", "--model_kind=siamese", scorer_flag]
        flags.FLAGS(argv)
        try:
            parsed = trainers.RunConfig.from_flags(flags.FLAGS)
        finally:
            flags.FLAGS.unparse_flags()
        assert parsed.pair_scorer == "weighted_l1"
    assert trainers.RunConfig().pair_scorer == "distance"


def test_identity_holds_what_defines_a_run():
    identity = trainers.RunConfig(epochs=3, model_dir="elsewhere", export=False).identity()
    assert identity["epochs"] == 3 and identity["loss"] is None and identity["model_kind"] is None
    for name in ("model_dir", "export", "overwrite", "log_level", "jit_compile"):
        assert name not in identity
    json.dumps(identity)


@pytest.mark.parametrize(
    "settings, error, match",
    [
        ({"epochs": 0}, ValueError, "`--epochs` must be >= 1; got 0"),
        ({"samples_per_class": 1}, ValueError, "--samples_per_class"),
        ({"classes_per_batch": 1}, ValueError, "--classes_per_batch"),
        ({"learning_rate": 0.0}, ValueError, "--learning_rate"),
        ({"learning_rate": -1e-3}, ValueError, r"`--learning_rate` must be a finite number > 0"),
        ({"learning_rate": float("inf")}, ValueError, r"--learning_rate` .* > 0; got inf"),
        ({"learning_rate": float("nan")}, ValueError, r"--learning_rate` .* > 0; got nan"),
        ({"train_fraction": 1.0}, ValueError, r"--train_fraction` must be in \(0, 1\)"),
        ({"protocol": "folds"}, ValueError,
         r"--protocol` must be one of \['samples', 'classes', 'pairs', 'reid'\]"),
        ({"schedule": "linear"}, ValueError, "'cosine'"),
        ({"dataset": "imagenet"}, ValueError, "directory:PATH"),
        ({"dataset": "npz"}, ValueError, "needs an argument"),
        ({"loss": "tripplet"}, ValueError, "'multi_similarity'"),
        ({"temperature": 0.5}, ValueError, "its arguments are"),
        ({"loss_args": {"no_such": 1}}, ValueError, "no_such"),
        ({"optimizer": "adamm"}, ValueError, "'adamw'"),
        ({"backbone": "resnet"}, ValueError, "'resnet50'"),
        ({"epochs": 2.5}, TypeError, "`epochs` must be an integer"),
        ({"l2_normalize": "yes"}, TypeError, "`l2_normalize` must be a boolean"),
        ({"optimizer": None}, TypeError, "`optimizer` must not be None"),
        ({"model_kind": "twin"}, ValueError, r"'embedding', 'proxy', 'siamese', 'triplet'"),
        ({"model_kind": "proxy", "loss": "triplet"}, ValueError, "needs a head"),
        ({"loss": "arcface", "model_kind": "embedding"}, ValueError, "use --model_kind=proxy"),
        ({"model_kind": "siamese", "loss": "triplet"}, ValueError, "pair_contrastive"),
        ({"model_kind": "triplet", "mining": "all"}, ValueError, "'easy', 'semi-hard', 'hard'"),
        ({"model_kind": "siamese", "curriculum": "0:hard"}, ValueError, "does not do"),
        ({"model_kind": "triplet", "curriculum": "2:hard"}, ValueError, "start at epoch 0"),
        ({"model_kind": "triplet", "curriculum": "0-hard"}, ValueError, "must look like"),
        ({"curriculum": "0:medium"}, ValueError, r"\['medium'\] are not among"),
        ({"batch_size": 32}, ValueError, "--classes_per_batch x --samples_per_class"),
        ({"pair_scorer": "weighted_l1"}, ValueError, "for --model_kind=siamese"),
        ({"model_kind": "siamese", "positive_fraction": 1.0}, ValueError, "--positive_fraction"),
        ({"model_kind": "siamese", "pair_scorer": "weighted_l1", "margin": 1.0}, ValueError,
         "takes no argument margin"),
        ({"tflite_variants": "fp32,int4"}, ValueError, r"\['int4'\] are not among"),
        ({"cluster_timeout": -1}, ValueError, "--cluster_timeout"),
        ({"tflite_variants": "fp32,fp16,fp32"}, ValueError,
         r"`--tflite_variants=fp32,fp16,fp32`: .*lists a variant twice"),
        ({"distance": "euclidean", "loss_args": {"distance": "cosine"}}, ValueError,
         r"`--distance=euclidean` and `--loss_arg=distance=cosine` disagree"),
        ({"margin": 0.2, "loss_args": {"margin": 0.5}}, ValueError,
         r"`--margin=0.2` and `--loss_arg=margin=0.5` disagree"),
        ({"mining": "hard", "loss_args": {"mining": "semi-hard"}}, ValueError,
         r"`--mining=hard` and `--loss_arg=mining=semi-hard`"),
        ({"loss": "supervised_contrastive", "temperature": 0.1,
          "loss_args": {"temperature": 0.2}}, ValueError, r"`--temperature=0.1` and `--loss_arg"),
        ({"loss": "arcface", "scale": 30.0, "loss_args": {"scale": 64.0}}, ValueError,
         r"`--scale=30.0` and `--loss_arg=scale=64.0`"),
        ({"positive_fraction": 0.9}, ValueError,
         r"`--positive_fraction=0.9` sets the matching pairs of --model_kind=siamese.*embedding"),
        ({"model_kind": "triplet", "positive_fraction": 0.3}, ValueError,
         "--positive_fraction=0.3"),
        ({"mixed_precision_policy": "mixed_float16"}, ValueError,
         r"`--mixed_precision_policy=mixed_float16` is used with --mixed_precision only"),
    ],
)
def test_bad_settings_name_the_setting(settings, error, match):
    with pytest.raises(error, match=match):
        trainers.RunConfig(**settings)


def test_settings_given_twice_alike_or_where_they_apply_are_accepted():
    config = trainers.RunConfig(distance="cosine", margin=0.2, loss_args={"distance": "cosine",
                                                                         "margin": 0.2})  # fmt: skip
    assert config.loss_arguments()["distance"] == "cosine"
    assert config.loss_arguments()["margin"] == 0.2
    assert trainers.RunConfig(model_kind="siamese", positive_fraction=0.25).positive_fraction == 0.25
    config = trainers.RunConfig(mixed_precision=True, mixed_precision_policy="mixed_float16")
    assert config.mixed_precision_policy == "mixed_float16"
    assert trainers.RunConfig(tflite_variants="fp32,int8").tflite_variant_list() == ("fp32", "int8")


def test_config_is_frozen_and_converts_numbers():
    config = trainers.RunConfig(learning_rate=1, margin=0)
    assert config.learning_rate == 1.0 and isinstance(config.margin, float)
    with pytest.raises(AttributeError):
        config.epochs = 3


def test_checking_a_config_runs_no_tensorflow_op():
    # A bad single setting (a range, a choice) is reported before TensorFlow is imported.
    # TensorFlow refuses to change its thread pools once it has run an op: a
    # configuration check (loss, optimizer, backbone, TF_CONFIG) must run none,
    # so that a multi-worker or TPU strategy can still be created after it.
    tf_config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                 "task": {"type": "worker", "index": 1}}  # fmt: skip
    code = (
        "import sys\n"
        "import trainers.train\n"
        "assert 'tensorflow' not in sys.modules, 'defining the flags imported TensorFlow'\n"
        "from trainers import RunConfig\n"
        "for bad in ({'embedding_dim': 0}, {'seed': -1}, {'views': 1}, {'epochs': 0}):\n"
        "    try:\n"
        "        RunConfig(**bad)\n"
        "    except ValueError:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError(bad)\n"
        "flag_values = trainers.train.FLAGS\n"
        "flag_values(['train', '--embedding_dim=0', '--loss_arg=margin=0.5'])\n"
        "try:\n"
        "    RunConfig.from_flags(flag_values)\n"
        "except ValueError as error:\n"
        "    assert 'embedding_dim' in str(error), error\n"
        "else:\n"
        "    raise AssertionError('--embedding_dim=0 was accepted')\n"
        "flag_values.unparse_flags()\n"
        "assert 'tensorflow' not in sys.modules, 'a bad single setting imported TensorFlow'\n"
        "RunConfig(loss='arcface', scale=30.0, optimizer='adamw', backbone='resnet50',"
        " strategy='multi_worker')\n"
        "RunConfig(loss='triplet', margin=0.2, mining='hard')\n"
        "import tensorflow as tf\n"
        "tf.config.threading.set_intra_op_parallelism_threads(1)\n"
        "print('no op ran')\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_CONFIG=json.dumps(tf_config))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no op ran" in result.stdout


@pytest.mark.parametrize(
    "tf_config, match",
    [
        (None, "needs the `TF_CONFIG` environment variable"),
        ("{cluster:", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"task": {"type": "worker", "index": 0}}, "needs `cluster`"),
        ({"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}, "task types must be"),
        ({"cluster": {"worker": ["a:1", "nohost"]}, "task": {"type": "worker", "index": 0}},
         "'nohost', not a 'host:port'"),
        ({"cluster": {"worker": ["a:1"]}}, "needs `task`"),
        ({"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, "`task.type`"),
        ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}},
         r"`task.index` 2 is out of range: `cluster.worker` has 2 address\(es\), indices 0..1"),
        ({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}},
         "must be an integer"),
    ],
)  # fmt: skip
def test_malformed_tf_config_is_refused(tf_config, match):
    environ = {} if tf_config is None else {
        "TF_CONFIG": tf_config if isinstance(tf_config, str) else json.dumps(tf_config)
    }  # fmt: skip
    with pytest.raises(ValueError, match=match):
        distribution.cluster_spec(environ)


def test_cluster_roles():
    both = {"chief": ["c:1"], "worker": ["w:1", "w:2"]}
    env = {"TF_CONFIG": json.dumps({"cluster": both, "task": {"type": "worker", "index": 0}})}
    spec = distribution.cluster_spec(env)
    assert not spec.is_chief and spec.num_workers == 3 and spec.address == "w:1"
    assert sorted(spec.peers()) == ["c:1", "w:2"]
    workers = {"worker": ["w:1", "w:2"]}
    env = {"TF_CONFIG": json.dumps({"cluster": workers, "task": {"type": "worker", "index": 0}})}
    assert distribution.cluster_spec(env).is_chief


def test_multi_worker_without_tf_config_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        trainers.RunConfig(strategy="multi_worker", model_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def python_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("py") / "run"
    config = trainers.RunConfig(
        backbone="mlp", embedding_dim=8, classes_per_batch=4, samples_per_class=4, epochs=2,
        steps_per_epoch=3, export=False, model_dir=str(model_dir),
    )  # fmt: skip
    assert not flags.FLAGS.is_parsed()  # no absl flags involved
    return trainers.run(config), model_dir


@pytest.mark.slow
def test_run_from_python_without_absl(python_run):
    report, model_dir = python_run
    assert report["optimizer_steps"] == 2 * 3
    assert report["flags"]["backbone"] == "mlp"
    written = json.loads((model_dir / outputs.REPORT_FILE).read_text())
    assert written["held_out"] == report["held_out"]
    for name in (outputs.FLAGS_FILE, outputs.MODEL_FILE, outputs.HISTORY_FILE, *outputs.PLOT_FILES):
        assert (model_dir / name).exists(), name
    assert set(os.listdir(model_dir)) <= set(outputs.OWN_OUTPUTS)
    assert 0.0 <= report["held_out"]["model"]["map_at_r"] <= 1.0
