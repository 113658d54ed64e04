"""sentence-transformers CrossEncoder: a base checkpoint without a trained classifier is refused."""

from __future__ import annotations

import pytest

from helpers.requires import need

import modelguard
from modelguard import guard
from modelguard.errors import RandomInitError

from helpers.tiny_bert import save_tiny_bert, save_tiny_tokenizer

torch = need("torch")
sentence_transformers = need("sentence_transformers")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross")
    base = save_tiny_tokenizer(save_tiny_bert(root / "base", "BertModel"))
    trained = save_tiny_tokenizer(save_tiny_bert(root / "trained", "BertForSequenceClassification"))
    return {"base": base, "trained": trained}


# Every test runs with the loader guard freshly installed (conftest.installed_guard).
pytestmark = [pytest.mark.guard(unknown="allow"), pytest.mark.usefixtures("installed_guard")]


def test_cross_encoder_on_a_base_checkpoint_names_the_new_classifier(checkpoints):
    with pytest.raises(RandomInitError) as info:
        sentence_transformers.CrossEncoder(str(checkpoints["base"]))
    assert info.value.keys == ("classifier.bias", "classifier.weight")
    text = str(info.value)
    assert "2 weight(s) were not in the checkpoint and would be randomly initialized: " \
           "classifier.bias, classifier.weight" in text
    assert "allow_random_init(keys='classifier.*')" in text


def test_cross_encoder_with_a_new_head_loads_when_allowed_by_name(checkpoints):
    with modelguard.allow_random_init(keys="classifier.*"):
        model = sentence_transformers.CrossEncoder(str(checkpoints["base"]))
    assert isinstance(model, sentence_transformers.CrossEncoder)


def test_trained_cross_encoder_scores_identically_to_an_unguarded_load(checkpoints):
    pairs = [("the guard", "verifies every file"), ("every file", "the guard")]
    guarded = sentence_transformers.CrossEncoder(str(checkpoints["trained"])).predict(pairs, convert_to_tensor=True)
    guard.uninstall()
    plain = sentence_transformers.CrossEncoder(str(checkpoints["trained"])).predict(pairs, convert_to_tensor=True)
    assert torch.equal(guarded, plain)
