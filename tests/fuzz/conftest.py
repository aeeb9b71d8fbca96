"""Hypothesis profiles of the fuzz suite, and its shared helpers on `sys.path`.

Two profiles, chosen by the environment variable `HYPOTHESIS_PROFILE`:

- `ci` (the default): few examples, derandomized (the same examples on every
  run, so CI is deterministic), no deadline (a loaded machine is not a bug),
  no example database written to disk.
- `dev`: many examples, random, with the example database, for local runs
  (`HYPOTHESIS_PROFILE=dev python -m pytest tests/fuzz`).
"""

import os
import sys

from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))

_QUIET_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci",
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=_QUIET_CHECKS,
)
settings.register_profile(
    "dev",
    max_examples=500,
    deadline=None,
    print_blob=True,
    suppress_health_check=_QUIET_CHECKS,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
