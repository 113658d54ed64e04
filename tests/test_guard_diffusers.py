"""The diffusers hook on a tiny real DDPM pipeline (UNet2DModel + DDPMScheduler) made here."""

from __future__ import annotations

import shutil
import warnings

import pytest

from helpers.requires import need

import modelguard
from modelguard import guard
from modelguard.errors import RandomInitError, VerificationError

from _tiny_loaders import DAMAGE, drop_tensors, save_tiny_ddpm

torch = need("torch")
diffusers = need("diffusers")

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    guard.uninstall()
    return save_tiny_ddpm(tmp_path_factory.mktemp("ddpm") / "pipe")


# Every test runs with the loader guard freshly installed (conftest.installed_guard).
pytestmark = [pytest.mark.guard(unknown="refuse"), pytest.mark.usefixtures("installed_guard")]


@pytest.fixture
def pipe_dir(pristine, tmp_path):
    d = tmp_path / "pipe"
    shutil.copytree(pristine, d)
    modelguard.save_manifest(modelguard.build_manifest(d, "acme/tiny-ddpm"), d / "modelguard.yaml")
    return d


def sample(unet):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 8, 8, generator=generator)
    with torch.no_grad():
        return unet(x, 3).sample


def test_pipeline_loads_with_outputs_identical_to_an_unguarded_load(pipe_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error", guard.GuardWarning)
        guarded = diffusers.DDPMPipeline.from_pretrained(pipe_dir)
    guard.uninstall()
    plain = diffusers.DDPMPipeline.from_pretrained(pipe_dir)
    assert torch.equal(sample(guarded.unet), sample(plain.unet))
    for (name, a), (_, b) in zip(guarded.unet.state_dict().items(), plain.unet.state_dict().items()):
        assert torch.equal(a, b), name
    assert guarded.scheduler.config == plain.scheduler.config


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_broken_component_is_named_before_the_pipeline_is_built(damage, pipe_dir, monkeypatch):
    spoil, diagnosis = DAMAGE[damage]
    spoil(pipe_dir / UNET_WEIGHTS)
    built = []
    real_init = diffusers.UNet2DModel.__init__
    monkeypatch.setattr(diffusers.UNet2DModel, "__init__", lambda self, *a, **k: built.append(1) or real_init(self, *a, **k))
    with pytest.raises(VerificationError) as info:
        diffusers.DDPMPipeline.from_pretrained(pipe_dir)
    text = str(info.value)
    # a changed byte in a file of the right size is found while the pipeline loads (modelguard.overlap):
    # what was built is dropped; every other damage is refused before anything is built
    assert built == ([1] if damage == "flipped" else [])
    assert f"modelguard refused to load acme/tiny-ddpm (diffusers DDPMPipeline.from_pretrained) from {pipe_dir}" in text
    assert f"broken component(s): unet ({UNET_WEIGHTS}: " in text
    assert f"FAIL {UNET_WEIGHTS} [model]: " in text and diagnosis in text


def test_a_model_in_a_pipeline_subfolder_is_verified_against_the_pipeline_manifest(pipe_dir):
    by_subfolder = diffusers.UNet2DModel.from_pretrained(pipe_dir, subfolder="unet")
    by_path = diffusers.UNet2DModel.from_pretrained(pipe_dir / "unet")
    assert torch.equal(sample(by_subfolder), sample(by_path))
    DAMAGE["flipped"][0](pipe_dir / UNET_WEIGHTS)
    for call in (lambda: diffusers.UNet2DModel.from_pretrained(pipe_dir, subfolder="unet"),
                 lambda: diffusers.UNet2DModel.from_pretrained(pipe_dir / "unet")):
        with pytest.raises(VerificationError) as info:
            call()
        text = str(info.value)
        assert "(diffusers UNet2DModel.from_pretrained)" in text
        assert f"broken component(s): unet ({UNET_WEIGHTS}: right size, wrong content" in text


def test_a_model_no_manifest_covers_follows_the_unknown_model_policy(pristine, tmp_path):
    d = tmp_path / "loose"
    shutil.copytree(pristine, d)
    with pytest.raises(modelguard.ManifestNotFoundError, match=r"no manifest applies to .*loose/unet \(loaded by diffusers UNet2DModel.from_pretrained\)"):
        diffusers.UNet2DModel.from_pretrained(d / "unet")
    modelguard.install(unknown="warn")
    with pytest.warns(guard.UnknownModelWarning) as caught:
        diffusers.DDPMPipeline.from_pretrained(d)
    # one report for the pipeline, none for the components it loads
    assert len([w for w in caught if issubclass(w.category, guard.UnknownModelWarning)]) == 1
    assert "(loaded by diffusers DDPMPipeline.from_pretrained)" in str(caught[0].message)


def test_each_pipeline_file_is_hashed_once(pipe_dir, monkeypatch):
    import importlib

    verify_module = importlib.import_module("modelguard.engine")
    seen = []
    real = verify_module.verify_directory

    def spy(manifest, directory=None, **kwargs):
        report = real(manifest, directory, **kwargs)
        seen.extend(r.path for r in report.files)
        return report

    monkeypatch.setattr(verify_module, "verify_directory", spy)
    diffusers.DDPMPipeline.from_pretrained(pipe_dir)
    assert sorted(seen) == sorted(["model_index.json", "scheduler/scheduler_config.json",
                                   "unet/config.json", UNET_WEIGHTS])


@pytest.fixture
def unet_missing_a_weight(pristine, tmp_path):
    d = tmp_path / "partial"
    shutil.copytree(pristine, d)
    guard.uninstall()
    dropped = drop_tensors(d / UNET_WEIGHTS, "conv_out.")
    modelguard.install(unknown="refuse")
    modelguard.save_manifest(modelguard.build_manifest(d, "acme/partial-ddpm"), d / "modelguard.yaml")
    assert dropped == ["conv_out.bias", "conv_out.weight"]
    return d


def test_weights_the_checkpoint_lacks_are_refused_by_name(unet_missing_a_weight):
    for call in (lambda: diffusers.DDPMPipeline.from_pretrained(unet_missing_a_weight),
                 lambda: diffusers.UNet2DModel.from_pretrained(unet_missing_a_weight, subfolder="unet"),
                 lambda: diffusers.UNet2DModel.from_pretrained(unet_missing_a_weight / "unet",
                                                               low_cpu_mem_usage=False)):
        with pytest.raises(RandomInitError) as info:
            call()
        assert info.value.keys == ("conv_out.bias", "conv_out.weight")
        text = str(info.value)
        assert "(diffusers UNet2DModel.from_pretrained): 2 weight(s) were not in the checkpoint" in text
        assert "allow_random_init(keys='conv_out.*')" in text


def test_allow_random_init_by_name_lets_the_model_load(unet_missing_a_weight):
    with modelguard.allow_random_init(keys="conv_out.*"):
        unet, info = diffusers.UNet2DModel.from_pretrained(
            unet_missing_a_weight / "unet", low_cpu_mem_usage=False, output_loading_info=True,
        )
    assert sorted(info["missing_keys"]) == ["conv_out.bias", "conv_out.weight"]
    with modelguard.allow_random_init(keys="conv_in.*"):
        with pytest.raises(RandomInitError, match="conv_out.bias, conv_out.weight"):
            diffusers.UNet2DModel.from_pretrained(unet_missing_a_weight / "unet")


def test_a_missing_file_of_an_optional_manifest_component_still_names_the_pipeline_component(pipe_dir):
    # generic build rules put scheduler/scheduler_config.json in the optional component 'other'
    manifest = modelguard.load_manifest(pipe_dir / "modelguard.yaml")
    assert manifest.file("scheduler/scheduler_config.json").component == "other"
    (pipe_dir / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(VerificationError) as info:
        diffusers.DDPMPipeline.from_pretrained(pipe_dir)
    text = str(info.value)
    assert "broken component(s): scheduler (scheduler/scheduler_config.json: missing: " in text


def test_a_verified_checkpoint_read_as_bytes_inside_the_loader_loads_under_refuse(pipe_dir):
    # disable_mmap: diffusers reads the verified file's bytes and calls safetensors.torch.load(bytes).
    from_bytes = diffusers.UNet2DModel.from_pretrained(pipe_dir / "unet", disable_mmap=True).state_dict()
    from_file = diffusers.UNet2DModel.from_pretrained(pipe_dir / "unet").state_dict()
    assert from_bytes.keys() == from_file.keys()
    assert all(torch.equal(from_bytes[k], from_file[k]) for k in from_file)
    DAMAGE["flipped"][0](pipe_dir / UNET_WEIGHTS)
    with pytest.raises(VerificationError, match=r"right size, wrong content"):
        diffusers.UNet2DModel.from_pretrained(pipe_dir / "unet", disable_mmap=True)
