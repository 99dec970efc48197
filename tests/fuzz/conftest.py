"""Property tests over every input llmfab parses (issue 19): a clear error naming the input and the
fix, or a 4xx; never a traceback, a hang, unbounded memory, a 5xx or a changed artifact.

One hypothesis profile bounds them so the suite keeps its time on two cores: a fixed number of
examples per property, derandomized in CI (the same inputs every run, so a red run is reproducible;
a developer gets fresh ones with ``HYPOTHESIS_PROFILE=explore``), and no example database written
into the tree. An input that ever broke something stays as an ``@example`` on its property.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "explore", max_examples=2000, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
