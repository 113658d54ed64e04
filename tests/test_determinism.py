"""seed_everything() and deterministic(): real RNGs, real torch flags, a real tiny causal LM."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

import modelguard
from modelguard.errors import UsageError



@pytest.fixture(scope="module")
def sampling_lm(tiny_lm_template):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_template).eval()
    assert model.generation_config.do_sample is True
    return model


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def _generate(model):
    ids = torch.tensor([[2, 3, 4]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, min_new_tokens=10,
                             pad_token_id=model.generation_config.pad_token_id)
    return out[0, 3:].tolist()


def test_seed_everything_seeds_python_numpy_and_torch(monkeypatch):
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    report = modelguard.seed_everything(123)
    first = _draws()
    assert {"python", "numpy", "torch"} <= set(report.seeded)
    # transformers is imported in this process (the LM fixture, sentence-transformers...) or not;
    # either way the report says whether its set_seed ran.
    assert ("transformers" in report.seeded) == ("transformers" in sys.modules)
    assert os.environ["PYTHONHASHSEED"] == "123"
    modelguard.seed_everything(123)
    assert _draws() == first
    modelguard.seed_everything(124)
    other = _draws()
    assert all(a != b for a, b in zip(other, first))


@pytest.mark.parametrize("bad, text", [("7", "seed must be an int, got str"), (-1, "seed -1 is out of range"),
                                       (2**32, "out of range"), (True, "seed must be an int, got bool")])
def test_seed_everything_rejects_bad_seeds(bad, text):
    with pytest.raises(UsageError) as info:
        modelguard.seed_everything(bad)
    assert text in str(info.value)
    assert "2**32" in str(info.value)


def test_pythonhashseed_note_depends_on_how_python_started(tmp_path):
    code = ("import modelguard; r = modelguard.seed_everything(5); "
            "print('NOTE' if any('PYTHONHASHSEED=5' in n for n in r.notes) else 'NONE')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    unset = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    fixed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**env, "PYTHONHASHSEED": "5"}, timeout=120)
    assert unset.stdout.strip() == "NOTE", unset.stderr
    assert fixed.stdout.strip() == "NONE", fixed.stderr


def test_deterministic_restores_the_rng_streams():
    modelguard.seed_everything(7)
    expected = [_draws(), _draws()]
    modelguard.seed_everything(7)
    got = [_draws()]
    with modelguard.deterministic(seed=0):
        inside = _draws()
        _draws()  # the block consumes numbers from every generator
    got.append(_draws())
    assert got == expected  # the stream continues as if the block had not run
    with modelguard.deterministic(seed=0):
        assert _draws() == inside


def test_deterministic_sets_then_restores_torch_flags_and_env(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "42")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    old = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
           torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = True
    try:
        env_before = dict(os.environ)
        with modelguard.deterministic(seed=3, warn_only=True) as report:
            assert report.seed == 3
            assert torch.are_deterministic_algorithms_enabled()
            assert torch.is_deterministic_algorithms_warn_only_enabled()
            assert torch.backends.cudnn.deterministic is True
            assert torch.backends.cudnn.benchmark is False
            assert os.environ["PYTHONHASHSEED"] == "3"
            if torch.version.cuda is not None:
                assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
            else:  # a CPU build of torch has no cuBLAS: nothing to set
                assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        assert torch.are_deterministic_algorithms_enabled() is False
        assert torch.is_deterministic_algorithms_warn_only_enabled() is False
        assert torch.backends.cudnn.deterministic is False
        assert torch.backends.cudnn.benchmark is True
        assert dict(os.environ) == env_before
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old[2], old[3]


def test_deterministic_restores_state_after_an_exception(monkeypatch):
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    modelguard.seed_everything(11)
    expected = _draws()
    modelguard.seed_everything(11)
    with pytest.raises(ZeroDivisionError):
        with modelguard.deterministic(seed=1):
            _draws()
            1 / 0
    assert _draws() == expected
    assert torch.are_deterministic_algorithms_enabled() is False
    assert os.environ["PYTHONHASHSEED"] == "11"  # seed_everything's value, not the block's


def test_deterministic_repeats_a_sampled_generation(sampling_lm):
    with modelguard.deterministic(seed=5):
        first = _generate(sampling_lm)
    with modelguard.deterministic(seed=5):
        second = _generate(sampling_lm)
    with modelguard.deterministic(seed=6):
        other_seed = _generate(sampling_lm)
    assert first == second
    assert other_seed != first  # the model really samples: another seed, another answer


def test_deterministic_works_as_a_decorator(sampling_lm):
    @modelguard.deterministic(seed=9)
    def answer():
        return _generate(sampling_lm)

    assert answer() == answer()


def test_reproducibility_modules_import_no_heavy_library():
    code = ("import sys, modelguard, modelguard.determinism, modelguard.probing, modelguard.auditing, "
            "modelguard._commands.audit, modelguard._commands.probe; "
            "assert callable(modelguard.probe) and callable(modelguard.audit), 'a submodule shadows a function'; "
            "print(sorted(m for m in ('torch', 'numpy', 'transformers', 'FlagEmbedding', 'huggingface_hub', "
            "'sentence_transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
