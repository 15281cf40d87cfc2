"""``sample(..., devices=)``: each call's rows over several devices give one device's samples."""

from __future__ import annotations

import threading

import pytest
import torch

import samplerlab as sl
from samplerlab.analytic import ClassConditionalMixture, GaussianMixture
from samplerlab.samplers import SAMPLERS
from samplerlab.samplers.api import check_devices
from samplerlab.samplers.sharding import ProcessGroupRows, replicate

KW = {"steps": 6, "shape": (5, 4), "seeds": range(3, 8), "dtype": torch.float64}


class _Recording(GaussianMixture):
    """A mixture that records, per object, the rows of each call (class-level: shared by
    the deep copies ``devices=`` makes)."""

    calls: list[tuple[int, int]] = []  # noqa: RUF012

    def __call__(self, x, sigma):
        _Recording.calls.append((id(self), x.shape[0]))
        return super().__call__(x, sigma)


def _recording() -> _Recording:
    g = GaussianMixture.default(dim=4, components=3, seed=1)
    return _Recording(g.weights, g.means, g.stds, g.vp)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_two_cpu_devices_equal_one(name):
    """Every registered sampler: float64 samples, NFE and rounds on ["cpu", "cpu"] are those
    of the unsharded run, bit for bit, and both replicas computed part of the rows."""
    den = _recording()
    _Recording.calls.clear()
    one = sl.sample(den, name, **KW)
    widest = max(rows for _, rows in _Recording.calls)
    _Recording.calls.clear()
    two = sl.sample(den, name, devices=["cpu", "cpu"], **KW)
    assert torch.equal(two.x, one.x), name
    assert (two.nfe, two.rounds) == (one.nfe, one.rounds)
    owners = {owner for owner, rows in _Recording.calls}
    assert len(owners) == 2 and id(den) in owners  # the denoiser itself and one copy
    # The rows were split: the same rows in all, no replica call wider than half the widest
    # unsharded call (rounded up).
    assert sum(rows for _, rows in _Recording.calls) == round(one.nfe * KW["shape"][0])
    assert max(rows for _, rows in _Recording.calls) == (widest + 1) // 2


def test_guided_rows_over_devices():
    """Conditioned, guided rows (cond + uncond per call) split over replicas."""
    model = ClassConditionalMixture.random(dim=4, components=3, spread=1.5, seed=2)
    kw = {**KW, "cond": torch.tensor([0, 2, 1, 1, 0]), "uncond": torch.tensor([-1])}
    kw["guidance"] = torch.tensor([2.0, 1.0, 3.0, 0.5, 4.0])
    for name in ("ddim", "srds", "paradigms", "pmm"):
        one = sl.sample(model, name, **kw)
        three = sl.sample(model, name, devices=["cpu"] * 3, **kw)
        assert torch.equal(three.x, one.x), name
        assert three.nfe == one.nfe


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4, dtype=torch.float64)

    def forward(self, x, c_noise):
        return self.lin(x)


def test_replicas_are_copies_with_their_network():
    net = _Net()
    den = sl.samplers.denoisers.EDMDenoiser(net)
    reps = replicate(den, [torch.device("cpu")] * 3)
    assert reps[0] is den and reps[1] is not den and reps[2] is not reps[1]
    nets = [r.info.network for r in reps]
    assert nets[0] is net and all(n is not net for n in nets[1:]) and nets[1] is not nets[2]
    assert all(r.net is r.info.network for r in reps)
    one = sl.sample(den, "srds", **KW)
    assert torch.equal(sl.sample(den, "srds", devices=["cpu", "cpu"], **KW).x, one.x)
    # A network reached through a function's closure is not copied: one clear line.
    for fn in (lambda x, s: net(x, s), sl.samplers.denoisers.EDMDenoiser(lambda x, c: net(x, c))):
        with pytest.raises(sl.SamplerError, match="does not copy its network"):
            sl.sample(fn, "ddim", devices=["cpu", "cpu"], **KW)
    # Declared, but the call reaches the original through a closure: refused too.
    declared = sl.samplers.denoisers.EDMDenoiser(lambda x, c: net(x, c), network=net)
    with pytest.raises(sl.SamplerError, match="does not copy its network"):
        sl.sample(declared, "ddim", devices=["cpu", "cpu"], **KW)


def test_uncopyable_denoiser_is_one_line():
    class Locked(GaussianMixture):
        pass

    g = GaussianMixture.default(dim=4, components=3, seed=1)
    den = Locked(g.weights, g.means, g.stds, g.vp)
    den.lock = threading.Lock()
    with pytest.raises(sl.SamplerError, match=r"devices: the denoiser cannot be copied to cpu"):
        sl.sample(den, "ddim", devices=["cpu", "cpu"], **KW)


@pytest.mark.parametrize(
    ("devices", "match"),
    [
        ("gpu", "devices 'gpu' is not a device"),
        (["cpu", "tpu:0"], "devices 'tpu:0'"),
        (0, "devices=0: need at least one device"),
        ([], "devices must not be empty"),
        (2.5, "devices must be a list of devices"),
        (torch.device("cpu"), "devices must be a list of devices"),
        ("distributed", "devices='distributed' needs torch.distributed initialised"),
    ],
)
def test_bad_devices_are_one_line(devices, match, gmm):
    with pytest.raises(sl.SamplerError, match=match) as e:
        sl.sample(gmm, "ddim", devices=devices, **KW)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU machine")
def test_cuda_devices_on_a_cpu_machine(gmm):
    for devices in (2, ["cuda:0", "cuda:1"]):
        with pytest.raises(sl.SamplerError, match="CUDA is not available"):
            sl.sample(gmm, "srds", devices=devices, **KW)


def test_check_devices_forms():
    assert check_devices("cpu") == [torch.device("cpu")]
    assert check_devices(("cpu", torch.device("cpu"))) == [torch.device("cpu")] * 2
    assert check_devices.__module__ == "samplerlab.samplers.api"
    assert ProcessGroupRows().group is None
