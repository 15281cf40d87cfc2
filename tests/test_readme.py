"""The README's Python block runs exactly as written, on a tiny model."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_block() -> str:
    text = README.read_text()
    section = text[text.index("## Python API") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "README's Python API section has no ```python block"
    return match.group(1)


def test_readme_python_block_runs_as_written(tmp_path, monkeypatch):
    # The names the block takes from the reader: a tiny diffusers folder at the path it
    # names, an eps model on a table, and one's own initial noise.
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "path" / "to" / "ddpm-folder"
    torch.manual_seed(0)
    UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 8),
        layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).save_pretrained(folder)  # fmt: skip
    DDPMScheduler(beta_schedule="linear").save_pretrained(folder)
    alphas_cumprod = DDPMScheduler(beta_schedule="linear").alphas_cumprod.double()
    namespace = {
        "eps_fn": lambda x_vp, t: torch.zeros_like(x_vp),
        "alphas_cumprod": alphas_cumprod,
        "path": folder,
        "z": torch.randn(16, 3, 32, 32),
    }
    exec(compile(python_api_block(), str(README), "exec"), namespace)
    res = namespace["res"]
    assert res.name == "iia_edm" and res.x.shape == (16, 3, 32, 32)
    assert (tmp_path / "edm6.safetensors").is_file()
