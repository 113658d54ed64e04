"""FlagEmbedding 1.2.x ``FlagModel`` and ``FlagReranker`` (``FlagEmbedding.flag_models`` /
``flag_reranker``): the model folder is verified before construction, a reranker on a base
checkpoint is refused naming the class."""

from __future__ import annotations

import shutil
import warnings
from importlib.metadata import version

import pytest

if not version("FlagEmbedding").startswith("1.2."):
    pytest.skip("needs FlagEmbedding 1.2.x (bash tools/setup_fe12_env.sh)", allow_module_level=True)

import modelguard  # noqa: E402
import torch  # noqa: E402
from modelguard import guard  # noqa: E402
from modelguard.errors import RandomInitError, VerificationError  # noqa: E402

from _tiny_loaders import DAMAGE  # noqa: E402
from helpers.tiny_bert import save_tiny_bert, save_tiny_tokenizer  # noqa: E402

import FlagEmbedding  # noqa: E402

pytestmark = [pytest.mark.guard(unknown="refuse"), pytest.mark.usefixtures("installed_guard")]
PAIRS = [("the guard", "verifies every file"), ("every file", "the guard")]
RUN = {
    "FlagModel": ("bert", lambda d: torch.as_tensor(FlagEmbedding.FlagModel(str(d), use_fp16=False)
                                                    .encode(["the guard verifies", "every file"]))),
    "FlagReranker": ("classifier", lambda d: torch.tensor(FlagEmbedding.FlagReranker(str(d), use_fp16=False)
                                                          .compute_score(PAIRS))),
}


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    root = tmp_path_factory.mktemp("flag-models-12")
    return {"bert": save_tiny_tokenizer(save_tiny_bert(root / "bert", "BertModel")),
            "classifier": save_tiny_tokenizer(save_tiny_bert(root / "classifier", "BertForSequenceClassification"))}


def _copy(templates, which, tmp_path):
    d = shutil.copytree(templates[which], tmp_path / which)
    modelguard.save_manifest(modelguard.build_manifest(d, f"acme/{which}"), d / "modelguard.yaml")
    return d


def test_the_12_classes_are_the_ones_patched():
    from modelguard.hooks import is_wrapped

    assert FlagEmbedding.FlagModel.__module__ == "FlagEmbedding.flag_models"
    assert all(is_wrapped(vars(getattr(FlagEmbedding, name))["__init__"])
               for name in ("FlagModel", "FlagReranker", "FlagLLMReranker"))


@pytest.mark.parametrize("public", RUN)
def test_intact_model_scores_bit_identical_to_an_unguarded_load(public, templates, tmp_path):
    which, run = RUN[public]
    d = _copy(templates, which, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", guard.GuardWarning)
        guarded = run(d)
    guard.uninstall()
    assert torch.equal(guarded, run(d))


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("public", RUN)
def test_damaged_weights_are_refused_naming_the_class(public, damage, templates, tmp_path):
    which, run = RUN[public]
    d = _copy(templates, which, tmp_path)
    spoil, diagnosis = DAMAGE[damage]
    spoil(d / "model.safetensors")
    with pytest.raises(VerificationError) as info:
        run(d)
    assert f"modelguard refused to load acme/{which} (FlagEmbedding {public}) from {d}" in str(info.value)
    assert diagnosis in str(info.value)


def test_reranker_on_a_base_checkpoint_is_refused_naming_the_classifier(templates, tmp_path):
    d = _copy(templates, "bert", tmp_path)
    with pytest.raises(RandomInitError) as info:
        FlagEmbedding.FlagReranker(str(d), use_fp16=False)
    assert info.value.keys == ("classifier.bias", "classifier.weight")
    assert "(FlagEmbedding FlagReranker, via transformers BertForSequenceClassification.from_pretrained)" \
        in str(info.value)
