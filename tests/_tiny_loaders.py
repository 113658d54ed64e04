"""Tiny real checkpoints for the direct-read, diffusers and peft guard tests (a few kB each)."""

from __future__ import annotations

import os
from pathlib import Path


def save_direct_files(directory: str | Path) -> Path:
    """``weights.pt`` (torch.save), ``weights.safetensors`` and an ONNX model whose weights
    live in an external data file (``model.onnx`` + ``model.onnx_data``)."""
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    tensors = {"layer.weight": torch.randn(8, 4, generator=generator), "layer.bias": torch.randn(8, generator=generator)}
    torch.save(tensors, directory / "weights.pt")
    save_file(tensors, str(directory / "weights.safetensors"), metadata={"format": "pt"})
    save_onnx_with_external_data(directory)
    return directory


def save_onnx_with_external_data(directory: Path, name: str = "model.onnx") -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["M"]), helper.make_node("Add", ["M", "B"], ["Y"])],
        "tiny", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 4])], [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = directory / name
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=name + "_data", size_threshold=0)
    return path


def tiny_unet(seed: int = 0):
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )


def save_tiny_ddpm(directory: str | Path) -> Path:
    """A DDPMPipeline (tiny UNet2DModel in ``unet/``, DDPMScheduler in ``scheduler/``)."""
    from diffusers import DDPMPipeline, DDPMScheduler

    directory = Path(directory)
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(directory)
    return directory


class TinyNet:
    """A two-layer torch module built the same way each time (the base of the adapters)."""

    @staticmethod
    def build():
        import torch

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lin1 = torch.nn.Linear(4, 8)
                self.lin2 = torch.nn.Linear(8, 2)

            def forward(self, x):
                return self.lin2(torch.relu(self.lin1(x)))

        torch.manual_seed(0)
        return Net()


def save_tiny_lora(directory: str | Path, targets: tuple[str, ...] = ("lin1", "lin2")) -> Path:
    """A LoRA adapter for :class:`TinyNet` with non-zero weights on every targeted module."""
    import peft
    import torch

    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=list(targets), init_lora_weights=False)
    torch.manual_seed(1)
    model = peft.get_peft_model(TinyNet.build(), config)
    directory = Path(directory)
    model.save_pretrained(directory)
    return directory


def drop_tensors(path: Path, containing: str) -> list[str]:
    """Rewrite the safetensors file ``path`` without the tensors whose names contain ``containing``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    dropped = sorted(k for k in tensors if containing in k)
    save_file({k: v for k, v in tensors.items() if containing not in k}, str(path), metadata=metadata)
    return dropped


# ------------------------------------------------------------------- damage


def flip_byte(path: Path) -> None:
    """Same size, one bit different, near the end (inside the last tensor's bytes)."""
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def remove(path: Path) -> None:
    os.remove(path)


DAMAGE = {
    "flipped": (flip_byte, "right size, wrong content"),
    "truncated": (truncate, "truncated"),
    "missing": (remove, "missing"),
}
