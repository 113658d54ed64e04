"""trust_remote_code under the guard: a model's .py files run only when the manifest lists
them and the copies transformers is about to execute verify."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from helpers.requires import need

import modelguard
from modelguard import guard
from modelguard.errors import UnsafeFileError

transformers = need("transformers")
torch = need("torch")

CONFIG_PY = '''
from transformers import PretrainedConfig


class TinyRemoteConfig(PretrainedConfig):
    model_type = "tiny-remote"

    def __init__(self, width=4, **kwargs):
        self.width = width
        super().__init__(**kwargs)
'''

MODELING_PY = '''
import torch
from transformers import PreTrainedModel

from .configuration_tiny import TinyRemoteConfig

open({marker!r}, "a").write("modeling ran\\n")


class TinyRemoteModel(PreTrainedModel):
    config_class = TinyRemoteConfig
    base_model_prefix = "tiny"

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Linear(config.width, config.width)
        self.post_init()

    def forward(self, x):
        return self.proj(x)
'''


def make_remote_code_model(root: Path, marker: Path) -> Path:
    """A tiny model whose config.json auto_map points at its own configuration/modeling files."""
    from safetensors.torch import save_file

    root.mkdir(parents=True)
    (root / "configuration_tiny.py").write_text(CONFIG_PY)
    (root / "modeling_tiny.py").write_text(MODELING_PY.format(marker=str(marker)))
    (root / "config.json").write_text(json.dumps({
        "model_type": "tiny-remote", "width": 4, "architectures": ["TinyRemoteModel"],
        "auto_map": {"AutoConfig": "configuration_tiny.TinyRemoteConfig",
                     "AutoModel": "modeling_tiny.TinyRemoteModel"},
    }))
    torch.manual_seed(0)
    save_file({"proj.weight": torch.randn(4, 4), "proj.bias": torch.randn(4)}, str(root / "model.safetensors"),
              metadata={"format": "pt"})  # as save_pretrained writes it; transformers 4.46 needs it
    return root


def pin(root: Path, **build) -> Path:
    modelguard.save_manifest(modelguard.build_manifest(root, "acme/tiny-remote", **build), root / "modelguard.yaml")
    return root


# Every test runs with the loader guard freshly installed, unknown models refused (conftest.installed_guard).
pytestmark = [pytest.mark.guard(unknown="refuse"), pytest.mark.usefixtures("installed_guard")]


@pytest.fixture
def model(tmp_path, request):
    marker = tmp_path / "code-ran.txt"
    # a unique folder name: transformers names the dynamic module after it
    root = make_remote_code_model(tmp_path / f"tiny_remote_{request.node.name[5:25]}", marker)
    return root, marker


def test_pinned_remote_code_loads(model):
    root, marker = pin(model[0]), model[1]
    loaded = transformers.AutoModel.from_pretrained(root, trust_remote_code=True)
    assert type(loaded).__name__ == "TinyRemoteModel"
    assert marker.read_text() == "modeling ran\n"
    from safetensors.torch import load_file

    assert torch.equal(loaded.proj.weight, load_file(str(root / "model.safetensors"))["proj.weight"])


def test_tampered_modeling_file_never_runs(model):
    root, marker = pin(model[0]), model[1]
    evil = root / "modeling_tiny.py"
    evil.write_text(evil.read_text().replace('"modeling ran\\n"', '"TAMPERED CODE RAN\\n"'))
    with pytest.raises(UnsafeFileError) as info:
        transformers.AutoModel.from_pretrained(root, trust_remote_code=True)
    err = info.value
    assert "refusing to run remote code modeling_tiny.py" in str(err)
    assert "differs from the manifest" in err.message and "not the reviewed code" in err.message
    assert err.expected.startswith("size ") and err.actual != err.expected
    assert not marker.exists()


def test_tampered_relatively_imported_file_never_runs(model):
    root, marker = pin(model[0]), model[1]
    cfg = root / "configuration_tiny.py"
    cfg.write_text(cfg.read_text() + f"\nopen({str(marker)!r}, 'a').write('config tampered')\n")
    with pytest.raises(UnsafeFileError, match="configuration_tiny.py differs from the manifest"):
        transformers.AutoModel.from_pretrained(root, trust_remote_code=True)
    assert not marker.exists()


def test_code_missing_from_the_manifest_is_refused(model):
    root, marker = pin(model[0], exclude=["modeling_tiny.py"]), model[1]
    with pytest.raises(UnsafeFileError) as info:
        transformers.AutoModel.from_pretrained(root, trust_remote_code=True)
    assert "modeling_tiny.py is not listed in the manifest" in info.value.message
    assert "modelguard build" in info.value.remedy
    assert not marker.exists()


def test_remote_code_of_a_model_without_manifest_is_refused(model):
    root, marker = model
    with pytest.raises(UnsafeFileError) as info:
        transformers.AutoModel.from_pretrained(root, trust_remote_code=True)
    assert "no manifest is known for this model" in info.value.message
    assert "MODELGUARD_UNKNOWN=allow" in info.value.remedy
    assert not marker.exists()


def test_unknown_allow_is_the_only_opt_out(model):
    root, marker = model
    modelguard.install(unknown="allow")
    loaded = transformers.AutoModel.from_pretrained(root, trust_remote_code=True)
    assert type(loaded).__name__ == "TinyRemoteModel" and marker.exists()


def test_uninstall_restores_transformers(model):
    from transformers import dynamic_module_utils

    assert modelguard.hooks.is_wrapped(dynamic_module_utils.get_cached_module_file)
    guard.uninstall()
    assert not modelguard.hooks.is_wrapped(dynamic_module_utils.get_cached_module_file)
