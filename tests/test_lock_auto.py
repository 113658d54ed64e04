"""Under a lock, the auto classes read every file at the locked commit: AutoModel's own
AutoConfig (and AutoConfig, AutoTokenizer, AutoFeatureExtractor, AutoImageProcessor,
AutoProcessor called directly, and ``pipeline()``) get the locked revision before config.json
or preprocessor_config.json is read, so a default branch that moved on cannot lend its config
to the locked weights.

The real transformers and huggingface_hub load from the test Hub (tests/hubserver.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.requires import need

need("huggingface_hub")
need("transformers")

MODEL = "org/moving"

LOAD = """
import json, sys, warnings
import modelguard
from modelguard.errors import ModelGuardError

modelguard.install()
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoProcessor, AutoTokenizer, pipeline

def pipeline_of(name):
    made = pipeline("feature-extraction", model=name)
    return [made.model.config.num_hidden_layers, made.tokenizer.model_max_length]

steps = {
    "model": lambda: AutoModel.from_pretrained(sys.argv[1]).config.num_hidden_layers,
    "config": lambda: AutoConfig.from_pretrained(sys.argv[1]).num_hidden_layers,
    "tokenizer": lambda: AutoTokenizer.from_pretrained(sys.argv[1]).model_max_length,
    "features": lambda: AutoFeatureExtractor.from_pretrained(sys.argv[1]).sampling_rate,
    "processor": lambda: AutoProcessor.from_pretrained(sys.argv[1]).model_max_length,
    "pipeline": lambda: pipeline_of(sys.argv[1]),
}
out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for name, step in steps.items():
        try:
            out[name] = step()
        except ModelGuardError as exc:
            out[name] = type(exc).__name__ + ": " + str(exc).replace("\\n", " // ")
out["warnings"] = sorted({type(w.message).__name__ for w in caught if "modelguard" in type(w.message).__module__})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> tuple[Path, Path]:
    """Commit A (2 layers, model_max_length 32, a feature extractor at 16 kHz) and commit B: the
    same weights, but config.json says 3 layers, tokenizer_config.json 64 and
    preprocessor_config.json 8 kHz."""
    from helpers.tiny_bert import save_tiny_bert, save_tiny_tokenizer

    a = save_tiny_bert(tmp_path_factory.mktemp("moving-a") / "model")
    save_tiny_tokenizer(a)
    tok = json.loads((a / "tokenizer_config.json").read_text())
    tok["model_max_length"] = 32
    (a / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))
    features = {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": 16000, "feature_size": 1,
                "padding_value": 0.0, "do_normalize": True, "return_attention_mask": False}
    (a / "preprocessor_config.json").write_text(json.dumps(features, indent=2))
    b = tmp_path_factory.mktemp("moving-b") / "model"
    shutil.copytree(a, b)
    config = json.loads((b / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    config["num_hidden_layers"] = 3
    (b / "config.json").write_text(json.dumps(config, indent=2))
    tok["model_max_length"] = 64
    (b / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))
    features["sampling_rate"] = 8000
    (b / "preprocessor_config.json").write_text(json.dumps(features, indent=2))
    return a, b


# What every step reads at commit A.
LOCKED = {"model": 2, "config": 2, "tokenizer": 32, "features": 16000, "processor": 32, "pipeline": [2, 32],
          "warnings": []}


def load(cwd: Path, *, offline: bool) -> dict:
    env = {**os.environ, **({"HF_HUB_OFFLINE": "1"} if offline else {})}
    proc = subprocess.run([sys.executable, "-c", LOAD, MODEL], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def download(hub) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(MODEL, cache_dir=os.environ["HF_HUB_CACHE"], endpoint=hub.endpoint))


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_auto_classes_read_the_config_at_the_locked_commit(hub, versions, tmp_path, offline):
    a, b = versions
    commit_a = hub.add_directory(MODEL, a)
    project = tmp_path / "project"
    project.mkdir()
    added = run_cli("lock", "add", MODEL, cwd=project)
    assert added.returncode == 0, added.stderr
    assert f"locked {MODEL} @ {commit_a}" in added.stdout
    download(hub)
    commit_b = hub.add_directory(MODEL, b)  # main moves on, with another config
    assert download(hub).name == commit_b  # the cache's refs/main now names B
    refs_main = Path(os.environ["HF_HUB_CACHE"]) / "models--org--moving" / "refs" / "main"
    assert refs_main.read_text() == commit_b

    locked = load(project, offline=offline)
    assert locked == LOCKED, locked

    # Without the lock the same program reads main: B's config, tokenizer and feature extractor
    # configs. (B's third layer has no weights, so the guard refuses the new weights: the mixed
    # load the lock prevents.)
    unlocked = load(tmp_path, offline=offline)
    assert unlocked["config"] == 3 and unlocked["tokenizer"] == 64, unlocked
    assert unlocked["features"] == 8000 and unlocked["processor"] == 64, unlocked
    for step in ("model", "pipeline"):
        assert unlocked[step].startswith("RandomInitError: "), unlocked
        assert "encoder.layer.2." in unlocked[step], unlocked


ADAPTER_LOAD = """
import sys, warnings
import modelguard
modelguard.install()
from transformers import AutoModel

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model = AutoModel.from_pretrained(sys.argv[1])
print(type(model).__name__, " ".join(sorted({type(m).__module__ + "." + type(m).__name__
                                             for m in model.modules() if "lora" in type(m).__module__})))
"""


def test_a_locked_peft_adapter_keeps_its_base_model_at_the_base_repos_revision(hub, versions, tmp_path):
    """AutoModel of an adapter repo loads the base model the adapter names: the adapter's locked
    commit must not be handed to the base repository."""
    need("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel as PlainAutoModel

    a, _ = versions
    hub.add_directory("org/base", a)
    adapter_dir = tmp_path / "adapter"
    lora = get_peft_model(PlainAutoModel.from_pretrained(a), LoraConfig(r=2, target_modules=["query", "value"]))
    lora.save_pretrained(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "org/base"
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    adapter_commit = hub.add_directory("org/lora", adapter_dir)
    project = tmp_path / "project"
    project.mkdir()
    added = run_cli("lock", "add", "org/lora", "org/base", cwd=project)
    assert added.returncode == 0, added.stderr
    assert f"locked org/lora @ {adapter_commit}" in added.stdout

    proc = subprocess.run([sys.executable, "-c", ADAPTER_LOAD, "org/lora"], capture_output=True, text=True,
                          timeout=600, cwd=project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["BertModel", "peft.tuners.lora.layer.Linear"], proc.stdout  # the adapter applied


PEFT_LOAD = """
import sys, warnings
import modelguard
modelguard.install()
from transformers import AutoModel
from peft import PeftModel

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    base = AutoModel.from_pretrained("org/base")
    model = PeftModel.from_pretrained(base, sys.argv[1])
print(repr(sum(float(p.double().sum()) for n, p in model.named_parameters() if "lora_" in n)))
"""


def test_a_locked_adapter_loaded_with_no_revision_is_the_locked_commit_not_main(hub, versions, tmp_path):
    """PeftModel.from_pretrained(base, "org/lora") names no revision: the guard verifies the
    locked commit and hands that revision to peft, so the weights peft loads are the ones
    verified, also after main moved on to other adapter weights."""
    need("peft")
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModel as PlainAutoModel

    a, _ = versions
    hub.add_directory("org/base", a)
    adapters = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        lora = get_peft_model(PlainAutoModel.from_pretrained(a),
                              LoraConfig(r=2, target_modules=["query", "value"], init_lora_weights=False))
        folder = tmp_path / f"adapter-{seed}"
        lora.save_pretrained(folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "org/base"
        (folder / "adapter_config.json").write_text(json.dumps(config))
        adapters.append(folder)
    sums = [sum(float(t.double().sum()) for t in load_file(f / "adapter_model.safetensors").values())
            for f in adapters]
    assert abs(sums[0] - sums[1]) > 1e-3
    locked_commit = hub.add_directory("org/lora-pin", adapters[0])
    project = tmp_path / "project"
    project.mkdir()
    added = run_cli("lock", "add", "org/lora-pin", "org/base", cwd=project)
    assert added.returncode == 0, added.stderr
    assert f"locked org/lora-pin @ {locked_commit}" in added.stdout
    hub.add_directory("org/lora-pin", adapters[1])  # main moves on to the other weights

    def loaded_sum(cwd: Path) -> float:
        proc = subprocess.run([sys.executable, "-c", PEFT_LOAD, "org/lora-pin"], capture_output=True, text=True,
                              timeout=600, cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return float(proc.stdout.split()[-1])

    assert loaded_sum(project) == pytest.approx(sums[0], rel=1e-6)  # the locked commit's adapter
    assert loaded_sum(tmp_path) == pytest.approx(sums[1], rel=1e-6)  # no lock: main's


WRAPPED = """
import modelguard
from modelguard import guard
from modelguard.hooks import is_wrapped
{before}
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer
{after}
classes = (AutoModel, AutoModelForSequenceClassification, AutoConfig, AutoTokenizer)
print(*(is_wrapped(c.from_pretrained) for c in classes))
guard.uninstall()
print(*(is_wrapped(c.from_pretrained) for c in classes))
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_every_auto_class_is_patched_and_restored_whenever_the_guard_is_installed(when):
    code = WRAPPED.format(before="modelguard.install()" if when == "before" else "",
                          after="modelguard.install()" if when == "after" else "")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["True True True True", "False False False False"]


def test_a_locked_model_loads_online_into_an_empty_cache(hub, versions, tmp_path):
    """The first load on a new machine: the auto class downloads config.json of the locked commit,
    then the guard completes the partial snapshot (the files the library would fetch next), verifies
    it against the lock entry, and the model loads."""
    a, _ = versions
    commit_a = hub.add_directory(MODEL, a)
    project = tmp_path / "project"
    project.mkdir()
    assert run_cli("lock", "add", MODEL, cwd=project).returncode == 0
    snapshot = Path(os.environ["HF_HUB_CACHE"]) / "models--org--moving" / "snapshots" / commit_a
    shutil.rmtree(Path(os.environ["HF_HUB_CACHE"]) / "models--org--moving", ignore_errors=True)
    locked = load(project, offline=False)
    assert locked == LOCKED, locked
    assert (snapshot / "model.safetensors").is_file()
    verified = run_cli("verify", "--lock", cwd=project, env={"HF_HUB_OFFLINE": "1"})
    assert verified.returncode == 0, verified.stdout + verified.stderr
