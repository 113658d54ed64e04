"""The seed-sensitivity probe with real tiny models: a sampling GPT-2, a tiny bge-m3 with and
without its colbert head, a classifier head transformers initializes at random, MiniLM."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import modelguard
from helpers.cli import run_cli
from modelguard.errors import UsageError
from modelguard.probing import (CALL_RANDOM, DETERMINISTIC, LOAD_RANDOM, SEED_DEPENDENT, UNSEEDED,
                                compare_outputs, probe_model)

from helpers.tiny_lm import copy_tiny_causal_lm


@pytest.fixture(scope="module")
def sampling_lm(tiny_lm_template) -> Path:
    return tiny_lm_template


@pytest.fixture(scope="module")
def greedy_lm(tiny_lm_template, tmp_path_factory) -> Path:
    return copy_tiny_causal_lm(tiny_lm_template, tmp_path_factory.mktemp("lm") / "greedy-lm",
                               generation={"do_sample": False})


PROMPT = torch.tensor([[2, 3, 4, 5]])


def _generate(model, **kwargs):
    with torch.no_grad():
        return model.generate(PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=8, min_new_tokens=8,
                              pad_token_id=model.generation_config.pad_token_id, **kwargs)[0, 4:]


def test_probe_finds_call_time_sampling_in_a_causal_lm(sampling_lm):
    from transformers import AutoModelForCausalLM

    report = modelguard.probe(load=lambda seed: AutoModelForCausalLM.from_pretrained(sampling_lm).eval(),
                              call=lambda model: {"generated_ids": _generate(model)})
    out = report.output("generated_ids")
    assert out.diagnosis == CALL_RANDOM
    assert out.load.identical and not out.call.identical
    assert "of 8 value(s) differ" in out.call.detail
    assert "sampling enabled at call time" in out.message
    assert report.call_dependent == ("generated_ids",) and report.load_dependent == ()
    assert report.random_parameters == ()  # both loads read the same weights
    assert report.summary() == "NOT deterministic: sampling at call time (generated_ids)"


def test_probe_finds_nothing_with_do_sample_false(sampling_lm):
    from transformers import AutoModelForCausalLM

    def load(seed):
        model = AutoModelForCausalLM.from_pretrained(sampling_lm).eval()
        return lambda: {"generated_ids": _generate(model, do_sample=False), "logits": model(PROMPT).logits}

    report = modelguard.probe(load, seeds=(3, 4))
    assert report.deterministic, report.format()
    assert [o.diagnosis for o in report.outputs] == [DETERMINISTIC, DETERMINISTIC]
    assert report.summary() == "deterministic: 2 output(s) identical under seeds 3 and 4"


def test_probe_finds_a_randomly_initialized_head(sampling_lm):
    """transformers builds a new classification head (MISSING keys) and carries on: load-time randomness."""
    from transformers import AutoModelForSequenceClassification

    def load(seed):
        return AutoModelForSequenceClassification.from_pretrained(sampling_lm, num_labels=3).eval()

    report = modelguard.probe(load=load, call=lambda m: {"scores": m(PROMPT).logits.detach()},
                              components={"scores": "classifier"})
    out = report.output("scores")
    assert out.diagnosis == LOAD_RANDOM
    assert out.load.max_abs_diff > 0 and out.call.identical
    assert report.random_parameters == ("score.weight",)
    assert "weights randomly initialized at load time (component classifier); e.g. score.weight" in out.message


def test_probe_without_a_runner_reports_seed_dependence_only():
    report = modelguard.probe(lambda seed: {"noise": torch.randn(4), "constant": torch.ones(4)})
    assert not report.separated
    assert report.output("noise").diagnosis == SEED_DEPENDENT
    assert "return a callable" in report.output("noise").message
    assert report.output("constant").diagnosis == DETERMINISTIC


def test_probe_finds_randomness_no_seed_controls():
    """numpy's default_rng() draws its seed from the OS: same seed, different output."""
    report = modelguard.probe(lambda seed: (lambda: {"rng": np.random.default_rng().random(3)}))
    out = report.output("rng")
    assert out.diagnosis == UNSEEDED
    assert not out.repeat.identical
    assert "varies even with the same seed" in out.message
    assert "seed-dependent or unseeded output(s): rng" in report.summary()


def test_probe_copes_with_outputs_that_come_and_go():
    def load(seed):
        return lambda: {"always": 1.0, **({"sometimes": 2.0} if random.random() < 0.5 else {})}

    report = modelguard.probe(load, seeds=(0, 1))  # python's random: 0 -> 0.84, 1 -> 0.13
    assert report.output("always").deterministic
    out = report.output("sometimes")
    assert out.diagnosis == CALL_RANDOM
    assert out.call.detail == "present in one run's outputs only"
    assert out.load.identical  # absent from both runs compared there


def test_probe_leaves_the_global_random_state_alone():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), float(np.random.rand()), torch.rand(2).tolist())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    modelguard.probe(lambda seed: (lambda: {"x": torch.rand(3), "y": np.random.rand(2)}))
    assert (random.random(), float(np.random.rand()), torch.rand(2).tolist()) == expected


def test_probe_rejects_bad_arguments():
    with pytest.raises(UsageError, match="two different seeds"):
        modelguard.probe(lambda seed: 1, seeds=(5, 5))
    with pytest.raises(UsageError, match="probe needs a loader"):
        modelguard.probe(None)
    with pytest.raises(UsageError, match="only when probing a model directory"):
        modelguard.probe(lambda seed: 1, kind="causal-lm")


def test_compare_outputs_treats_absent_sparse_weights_as_zero():
    same = compare_outputs([{"5": np.float32(0.5)}], [{"5": np.float32(0.5), "9": 0.0}])
    assert same.identical
    diff = compare_outputs({"a": [1.0, 2.0]}, {"a": [1.0, 2.5]})
    assert not diff.identical and diff.max_abs_diff == pytest.approx(0.5)
    shape = compare_outputs(np.zeros((2, 3)), np.zeros((2, 4)))
    assert not shape.identical and "shape (2, 3) vs (2, 4)" in shape.detail
    assert compare_outputs([1.0, 2.0], [1.0, 2.0 + 1e-9], atol=1e-6).identical


def test_cli_probe_sampling_lm_finds_call_time_dependence(sampling_lm, capsys):
    from modelguard.cli import main

    assert main(["probe", str(sampling_lm), "--json"]) == 1  # in-process: the CLI path without a new interpreter
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "causal-lm"
    assert doc["call_dependent"] == ["generated_ids"]
    assert doc["load_dependent"] == []
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert outputs["logits"]["diagnosis"] == "deterministic"
    assert outputs["generated_ids"]["diagnosis"] == "call_random"
    assert outputs["generated_ids"]["load_seed_change"]["identical"] is True


def test_probe_greedy_lm_is_deterministic(greedy_lm):
    report = probe_model(greedy_lm, max_new_tokens=4)
    assert report.kind == "causal-lm"
    assert report.deterministic
    assert {o.name for o in report.outputs} == {"logits", "generated_ids"}


def test_probe_bge_m3_missing_colbert_head(tiny_bge_m3):
    (tiny_bge_m3 / "colbert_linear.pt").unlink()
    proc = run_cli("probe", str(tiny_bge_m3))
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert "VARY  colbert  weights randomly initialized at load time (component colbert)" in out
    assert "VARY  sparse   weights randomly initialized at load time (component sparse)" in out
    assert "ok    dense    identical under both seeds" in out
    assert "missing in" in out and "colbert_linear.pt; FlagEmbedding then builds BOTH" in out
    assert "NOT deterministic: randomly initialized weights (component(s): colbert, sparse)" in out
    assert "Traceback" not in proc.stderr


def test_probe_complete_bge_m3_is_deterministic(tiny_bge_m3):
    report = modelguard.probe(str(tiny_bge_m3))
    assert report.kind == "bge-m3"
    assert report.deterministic, report.format()
    assert [o.name for o in report.outputs] == ["dense", "sparse", "colbert"]
    assert report.random_parameters == ()


def test_probe_real_minilm_is_deterministic(minilm_dir):
    report = probe_model(minilm_dir)
    assert report.kind == "sentence-transformers"
    assert report.deterministic
    (emb,) = report.outputs
    assert emb.name == "embeddings" and emb.load.identical and emb.call.identical
    assert emb.load.max_abs_value > 0  # real vectors were compared


def test_probe_unknown_model_kind_exits_2(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    proc = run_cli("probe", str(tmp_path))
    assert proc.returncode == 2
    assert "cannot tell how to run the model" in proc.stderr
    assert "architectures: ['BertModel']" in proc.stderr
    assert "--kind" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_probe_bad_seeds_option_exits_2(greedy_lm):
    proc = run_cli("probe", str(greedy_lm), "--seeds", "4,4")
    assert proc.returncode == 2
    assert "give two different seeds" in proc.stderr


def test_probe_model_id_not_in_cache_exits_2():
    proc = run_cli("probe", "test-org/absent")
    assert proc.returncode == 2
    assert "is not in the Hugging Face cache" in proc.stderr
    assert "modelguard fetch test-org/absent" in proc.stderr




@pytest.mark.parametrize("device, text", [
    ("gpu", "'gpu' is not a torch device"),
    pytest.param("cuda:0", "torch sees no CUDA device", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="this machine has a CUDA device")),
])
def test_probe_bad_device_exits_2(greedy_lm, capsys, device, text):
    from modelguard.cli import main

    assert main(["probe", str(greedy_lm), "--device", device]) == 2
    err = capsys.readouterr().err
    assert text in err
    assert "Traceback" not in err
