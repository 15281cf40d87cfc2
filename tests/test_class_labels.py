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


def test_chunks_of_copies_of_the_batch_keep_their_labels(folder):
    """max_rows cuts SRDS's stacked copies anywhere: each chunk's rows keep their samples'
    labels (before: refused unless max_rows was a multiple of the batch)."""
    den = from_diffusers(folder, dtype=F64, class_labels=torch.tensor([0, 1, 2]))
    kw = {"steps": 9, "shape": (3, 1, 4, 4), "dtype": F64, "schedule": "time_uniform"}
    serial = sl.sample(den, "ddim", **kw).x
    par = sl.sample(den, "srds", blocks=3, tol=0.0, max_rows=4, **kw).x
    torch.testing.assert_close(par, serial, rtol=0, atol=1e-10)


def test_rows_that_name_no_samples_are_refused(folder):
    """A call that is neither the batch nor copies of it, from a sampler that did not name
    its rows' samples, is one line (not labels silently paired with the wrong rows)."""
    den = from_diffusers(folder, dtype=F64, class_labels=torch.tensor([0, 1, 2]))
    x, sigma = torch.zeros(5, 1, 4, 4, dtype=F64), torch.ones(5, dtype=F64)
    with pytest.raises(SamplerError, match="class_labels has 3 entries but the network call has 5"):
        den(x, sigma)
    # Named rows (samples 2, 0, 0, 1, 2) are served.
    rows = torch.tensor([2, 0, 0, 1, 2])
    out = den.take(rows)(x, sigma)
    alone = [from_diffusers(folder, dtype=F64, class_labels=torch.tensor([int(r)])) for r in rows]
    ref = torch.cat([a(x[:1], sigma[:1]) for a in alone])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_pmm_midpoints_get_their_own_samples_labels(folder):
    """The bug case: PMM gathers its midpoint rows; with labels they must be each
    sample's own (before: max-abs 0.42 against each sample alone)."""
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    den = from_diffusers(folder, dtype=F64, class_labels=labels)
    kw = {"steps": 25, "dtype": F64}
    batch = sl.sample(den, "pmm", shape=(6, 1, 4, 4), seeds=range(6), **kw).x
    for k in range(6):
        alone = from_diffusers(folder, dtype=F64, class_labels=labels[k : k + 1])
        row = sl.sample(alone, "pmm", shape=(1, 1, 4, 4), seeds=[k], **kw).x
        torch.testing.assert_close(batch[k : k + 1], row, rtol=0, atol=1e-10)


def _label_cases() -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    for name, spec in sl.SAMPLERS.items():
        out.append((name, {}))
        out += [(name, {opt: 1.0}) for opt in spec.stochastic_options]
    # Per-sample windows that differ in length (rows that are not whole copies of the batch).
    out += [("paradigms", {"steps": 24, "window": 5, "tol": 0.05})]
    out += [("paradigms", {"steps": 24, "window": 5, "tol": 0.05, "max_rows": 3})]
    return out


LABEL_CASES = _label_cases()


@pytest.mark.parametrize(
    ("name", "options"), LABEL_CASES, ids=[f"{n}-{o}" if o else n for n, o in LABEL_CASES]
)
def test_per_sample_labels_batch_equals_each_sample_alone(folder, name, options):
    """With per-sample class labels, every sampler gives each sample what it gives that
    sample alone (same seed, its own label): samplers that evaluate a subset of the rows
    (pmm's midpoints, paradigms' windows) name the rows' samples (``take_rows``)."""
    labels, seeds = torch.tensor([2, 0, 1, 2]), [11, 3, 42, 7]
    kw = {"steps": 6, "dtype": F64, **options}
    den = from_diffusers(folder, dtype=F64, class_labels=labels)
    batch = sl.sample(den, name, shape=(4, 1, 4, 4), seeds=seeds, **kw).x
    for k in range(4):
        alone = from_diffusers(folder, dtype=F64, class_labels=labels[k : k + 1])
        row = sl.sample(alone, name, shape=(1, 1, 4, 4), seeds=seeds[k : k + 1], **kw).x
        err = float((batch[k : k + 1] - row).abs().max())
        assert err <= 1e-10 * max(1.0, float(row.abs().max())), f"sample {k}: {err:.3e}"


def test_sharded_replicas_keep_each_rows_label(folder):
    """Rows split over replicas (ShardedDenoiser) keep their samples' labels, also for
    gathered rows (pmm) and for copies of the batch (srds)."""
    from samplerlab.samplers.sharding import ShardedDenoiser

    labels = torch.tensor([0, 1, 2, 1, 0])
    den = from_diffusers(folder, dtype=F64, class_labels=labels)
    sharded = ShardedDenoiser([den, den], ["cpu", "cpu"])
    kw = {"shape": (5, 1, 4, 4), "dtype": F64, "seeds": range(5)}
    try:
        for name, opts in (("pmm", {"steps": 25}), ("srds", {"steps": 9, "blocks": 3})):
            ref = sl.sample(den, name, **opts, **kw).x
            torch.testing.assert_close(sl.sample(sharded, name, **opts, **kw).x, ref)
    finally:
        sharded.close()


def test_from_diffusers_declares_the_unet_the_fingerprint_finds(folder):
    from samplerlab.samplers.core import describe
    from samplerlab.samplers.fingerprint import find_module

    for labels in (None, torch.tensor([0, 2])):
        den = from_diffusers(folder, dtype=F64, class_labels=labels)
        unet = den.model_fn.unet
        assert isinstance(unet, torch.nn.Module)
        assert describe(den).network is unet and find_module(den) is unet
        if labels is not None:  # a row view keeps the network
            assert describe(den.take(torch.tensor([1]))).network is unet
