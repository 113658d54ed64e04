"""FlagEmbedding 1.2.x (``BGEM3FlagModel`` -> ``BGEM3Model.load_model`` with its own
``load_pooler``), against a real 1.2 install: every guard test of
tests/test_guard_flagembedding.py, run here on 1.2, and the 1.2-only paths."""

from __future__ import annotations

import logging
from importlib.metadata import version

import pytest

if not version("FlagEmbedding").startswith("1.2."):
    pytest.skip("needs FlagEmbedding 1.2.x (bash tools/setup_fe12_env.sh)", allow_module_level=True)

import modelguard  # noqa: E402
from modelguard import guard  # noqa: E402
from modelguard.errors import MissingHeadError  # noqa: E402

from helpers.bge_m3 import load_bge_m3, m3_outputs  # noqa: E402
from test_guard_flagembedding import *  # noqa: E402,F401,F403
from test_guard_flagembedding import FALLBACK_LOG, pytestmark  # noqa: E402,F401  (the installed guard)


def test_the_12_loader_is_the_one_patched():
    from FlagEmbedding.BGE_M3.modeling import BGEM3ForInference, BGEM3Model

    from modelguard.hooks import is_wrapped

    assert version("FlagEmbedding").startswith("1.2.")
    assert is_wrapped(vars(BGEM3Model)["load_model"])
    assert BGEM3ForInference.load_model is BGEM3Model.load_model  # inherited: one patch covers both


def test_fine_tuning_model_class_is_guarded(tiny_bge_m3, caplog):
    """``BGEM3Model`` (what 1.2's fine-tuning builds) goes through the same check."""
    from FlagEmbedding.BGE_M3.modeling import BGEM3Model

    (tiny_bge_m3 / "sparse_linear.pt").unlink()
    with caplog.at_level(logging.INFO), pytest.warns(guard.UnknownModelWarning), \
            pytest.raises(MissingHeadError) as info:
        BGEM3Model(model_name=str(tiny_bge_m3))
    assert info.value.component == "sparse"
    assert not any(FALLBACK_LOG in r.getMessage() for r in caplog.records)
    with modelguard.allow_random_init("sparse"), pytest.warns(guard.UnknownModelWarning):
        model = BGEM3Model(model_name=str(tiny_bge_m3))
    assert model.colbert_linear.weight.shape == (32, 32)


def test_guarded_12_outputs_equal_unguarded(tiny_bge_m3):
    guard.uninstall()
    expected = m3_outputs(load_bge_m3(tiny_bge_m3))
    modelguard.install(unknown="allow")
    assert m3_outputs(load_bge_m3(tiny_bge_m3)) == expected
