"""Without the guard, FlagEmbedding 1.2.x has the same silent random-head fallback
(tests/test_flagembedding_unguarded.py, run here on a real 1.2 install)."""

from __future__ import annotations

from importlib.metadata import version

import pytest

if not version("FlagEmbedding").startswith("1.2."):
    pytest.skip("needs FlagEmbedding 1.2.x (bash tools/setup_fe12_env.sh)", allow_module_level=True)

from test_flagembedding_unguarded import *  # noqa: E402,F401,F403
from test_flagembedding_unguarded import pytestmark  # noqa: E402,F401  (the guard uninstalled)
