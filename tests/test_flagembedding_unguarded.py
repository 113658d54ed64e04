"""The bug the guard prevents, shown on the real FlagEmbedding without modelguard.

With ``colbert_linear.pt`` absent, FlagEmbedding builds BOTH heads as fresh random
``torch.nn.Linear`` layers (it loads the heads only when both files exist) and only
logs at INFO level: sparse and colbert outputs then depend on ``torch.manual_seed``.
"""

from __future__ import annotations

import logging

import pytest

from helpers.requires import need

need("FlagEmbedding")

from helpers.bge_m3 import load_bge_m3, m3_outputs  # noqa: E402


# Every test runs with the guard uninstalled (conftest.installed_guard).
pytestmark = [pytest.mark.guard(installed=False), pytest.mark.usefixtures("installed_guard")]


def _outputs_with_seed(path, seed):
    import torch

    torch.manual_seed(seed)
    return m3_outputs(load_bge_m3(path))


def test_missing_colbert_head_makes_sparse_and_colbert_outputs_random(tiny_bge_m3, caplog):
    (tiny_bge_m3 / "colbert_linear.pt").unlink()
    with caplog.at_level(logging.INFO):
        first = _outputs_with_seed(tiny_bge_m3, 1)
    second = _outputs_with_seed(tiny_bge_m3, 2)
    again = _outputs_with_seed(tiny_bge_m3, 1)

    # It loads without an error or a warning; the only trace is an INFO log line.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "FlagEmbedding" in r.name]
    assert any("new initialize" in r.getMessage() for r in caplog.records)
    # Both heads are random: their outputs follow the seed...
    assert first["colbert"] != second["colbert"]
    assert first["sparse"] != second["sparse"]  # sparse_linear.pt was present, and is ignored
    assert first["sparse"] == again["sparse"] and first["colbert"] == again["colbert"]
    # ...while the backbone was loaded from its file.
    assert first["dense"] == second["dense"]


def test_missing_sparse_head_also_randomizes_both(tiny_bge_m3):
    (tiny_bge_m3 / "sparse_linear.pt").unlink()
    first = _outputs_with_seed(tiny_bge_m3, 1)
    second = _outputs_with_seed(tiny_bge_m3, 2)
    assert first["sparse"] != second["sparse"]
    assert first["colbert"] != second["colbert"]


def test_complete_model_outputs_do_not_depend_on_the_seed(tiny_bge_m3):
    first = _outputs_with_seed(tiny_bge_m3, 1)
    second = _outputs_with_seed(tiny_bge_m3, 2)
    assert first == second
    assert any(first["sparse"])  # the comparison covers real lexical weights, not empty dicts
