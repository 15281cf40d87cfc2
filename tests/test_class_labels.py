"""Class-conditional diffusers UNets: labels bound by closure survive parallel samplers."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

import samplerlab as sl
from samplerlab.denoisers import from_diffusers
from samplerlab.samplers import SamplerError

F64 = torch.float64


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond_unet")
    torch.manual_seed(0)
    UNet2DModel(
        sample_size=4, in_channels=1, out_channels=1, block_out_channels=(4, 8),
        layers_per_block=1, norm_num_groups=4, num_class_embeds=3,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).save_pretrained(root)  # fmt: skip
    DDPMScheduler(beta_schedule="linear", clip_sample=False).save_pretrained(root)
    return root


def test_one_label_for_all_rows_and_labels_matter(folder):
    kw = {"steps": 4, "shape": (2, 1, 4, 4), "dtype": F64}
    a = sl.sample(from_diffusers(folder, dtype=F64, class_labels=torch.tensor(0)), "ddim", **kw)
    b = sl.sample(from_diffusers(folder, dtype=F64, class_labels=torch.tensor(2)), "ddim", **kw)
    assert not torch.allclose(a.x, b.x)


def test_per_sample_labels_through_a_parallel_sampler(folder):
    labels = torch.tensor([0, 1, 2])
    den = from_diffusers(folder, dtype=F64, class_labels=labels)
    kw = {"steps": 9, "shape": (3, 1, 4, 4), "dtype": F64, "schedule": "time_uniform"}
    serial = sl.sample(den, "ddim", **kw).x
    # SRDS batches all blocks' rows (block-major copies of the batch) in one call.
    par = sl.sample(den, "srds", blocks=3, tol=0.0, **kw).x
    torch.testing.assert_close(par, serial, rtol=0, atol=1e-10)
    # The same sample with another label differs (labels reach the right rows).
    other = sl.sample(from_diffusers(folder, dtype=F64, class_labels=labels.flip(0)), "ddim", **kw)
    assert not torch.allclose(other.x[0], serial[0]) and torch.allclose(other.x[1], serial[1])


def test_rows_that_are_not_whole_batches_are_refused(folder):
    den = from_diffusers(folder, dtype=F64, class_labels=torch.tensor([0, 1, 2]))
    with pytest.raises(SamplerError, match="class_labels has 3 entries"):
        sl.sample(den, "srds", steps=9, shape=(3, 1, 4, 4), dtype=F64, blocks=3, max_rows=4)
