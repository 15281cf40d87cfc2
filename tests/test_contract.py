"""The declared denoiser contract (samplers/core.py): every denoiser class declares its
ModelInfo, wrappers declare the wrapped model's, and per-sample state follows the rows
through wrappers that split or post-process calls."""

from __future__ import annotations

import pytest
import torch

import samplerlab as sl
import samplerlab.denoisers  # its classes are in the subclass walk
from samplerlab.analytic import ClassConditionalMixture, Gaussian, GaussianMixture
from samplerlab.samplers.conditioning import Conditioned, Guided, condition
from samplerlab.samplers.core import (
    DenoiserBase,
    ModelBase,
    ModelInfo,
    SamplerError,
    WrapperBase,
    describe,
    has_row_state,
)
from samplerlab.samplers.denoisers import (
    ChunkedDenoiser,
    ClippedDenoiser,
    CountingDenoiser,
    EDMDenoiser,
    FiniteCheckDenoiser,
    check_output,
    from_eps,
)
from samplerlab.samplers.fingerprint import find_module
from samplerlab.samplers.sharding import DistributedDenoiser, ShardedDenoiser

F64 = torch.float64
NULL = ClassConditionalMixture.NULL


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_every_denoiser_class_declares_its_info():
    classes = _subclasses(DenoiserBase)
    names = {c.__name__ for c in classes}
    assert {"VPDenoiser", "EDMDenoiser", "Gaussian", "GaussianMixture", "CountingDenoiser"} <= names
    assert {"ChunkedDenoiser", "ClippedDenoiser", "FiniteCheckDenoiser", "Conditioned"} <= names
    assert {"Guided", "ShardedDenoiser", "DistributedDenoiser"} <= names
    for cls in classes:
        if cls is WrapperBase:  # the abstract base of wrappers (its subclasses declare)
            continue
        assert cls.info is not DenoiserBase.info, f"{cls.__name__} does not declare info"
    for cls in (CountingDenoiser, Conditioned, Guided, ShardedDenoiser, DistributedDenoiser):
        assert issubclass(cls, WrapperBase)
    for cls in (EDMDenoiser, Gaussian, GaussianMixture):
        assert issubclass(cls, ModelBase)


def test_a_plain_function_gets_the_defaults():
    info = describe(lambda x, sigma: x)
    assert info == ModelInfo()
    assert (info.sigma_min, info.sigma_max, info.prior_std) == (0.002, 80.0, 0.0)
    assert info.vp is None and info.data_shape is None and info.network is None


def test_undeclared_attributes_are_read_and_normalised():
    class Legacy:
        sigma_min, sigma_max, prior_std, data_shape = (
            torch.tensor(0.01, dtype=F64),
            10,
            None,
            [3, 4],
        )
        network = torch.nn.Linear(2, 2)  # never probed: only a declared info names it

        def __call__(self, x, sigma):
            return x

    info = describe(Legacy())
    assert info == ModelInfo(0.01, 10.0, 0.0, None, (3, 4))
    assert type(info.sigma_min) is float and info.data_shape == (3, 4)
    assert info.network is None


def _models():
    net = torch.nn.Linear(4, 4).double()
    gmm = GaussianMixture.random(dim=4, components=3, seed=1)
    vp = from_eps(net, gmm.vp.alphas_cumprod, data_shape=(4,))
    edm = EDMDenoiser(lambda x, c: x, sigma_min=0.01, sigma_max=20.0, preconditioned=False)
    return {"vp": vp, "edm": edm, "gmm": gmm}


@pytest.mark.parametrize("kind", ["vp", "edm", "gmm"])
def test_a_wrapper_declares_the_inner_info(kind):
    inner = _models()[kind]
    wrappers = [
        CountingDenoiser(inner),
        ChunkedDenoiser(inner, 2),
        ClippedDenoiser(inner),
        FiniteCheckDenoiser(inner),
        Conditioned(inner, torch.zeros(3)),
        Guided(inner, torch.zeros(3), torch.zeros(1), 2.0),
        ShardedDenoiser([inner, inner], ["cpu", "cpu"]),
        CountingDenoiser(ChunkedDenoiser(ClippedDenoiser(inner), 3)),
    ]
    want = describe(inner)
    for w in wrappers:
        got = describe(w)
        assert got == want and got.network is want.network, type(w).__name__
        # The fields read as attributes too (read-only), as on the model itself.
        assert (w.sigma_min, w.sigma_max, w.prior_std) == (
            inner.sigma_min,
            inner.sigma_max,
            inner.prior_std,
        )
        assert w.vp is inner.vp and w.data_shape == want.data_shape
        with pytest.raises(AttributeError):
            w.sigma_min = 1.0
    # Nothing else is forwarded.
    with pytest.raises(AttributeError):
        CountingDenoiser(inner).no_such_attribute  # noqa: B018


def test_model_attributes_stay_settable_and_info_follows():
    den = _models()["vp"]
    den.sigma_min, den.data_shape = 0.05, (2, 2)
    assert describe(den).sigma_min == 0.05 and describe(CountingDenoiser(den)).data_shape == (2, 2)
    gmm = GaussianMixture.random(dim=2, components=2, seed=0)
    gmm.prior_std = 0.5
    assert describe(gmm).prior_std == 0.5 and describe(gmm).vp is gmm.vp


def test_declared_network_is_the_module_the_fingerprint_finds():
    net = torch.nn.Linear(4, 4).double()
    table = GaussianMixture.random(dim=4, components=2, seed=0).vp.alphas_cumprod
    for den in (from_eps(net, table), EDMDenoiser(net)):
        assert describe(den).network is net
        assert describe(CountingDenoiser(den)).network is net
        assert find_module(den) is net
    closure = from_eps(lambda x, t: net(x), table)  # a closure: nothing declared, crawled
    assert describe(closure).network is None and find_module(closure) is net
    assert describe(GaussianMixture.random(dim=2, components=2)).network is None


def test_check_output_names_both_shapes():
    x = torch.zeros(3, 2)
    assert check_output(x + 1, x) is not None
    with pytest.raises(SamplerError, match=r"returned \(3, 1\) for an input of shape \(3, 2\)"):
        check_output(torch.zeros(3, 1), x)
    with pytest.raises(SamplerError, match="returned float"):
        check_output(1.0, x)
    with pytest.raises(SamplerError, match=r"returned \(2,\)"):
        CountingDenoiser(lambda x, s: torch.zeros(2))(x, torch.ones(3))


def test_row_state_is_declared_by_take():
    gmm = GaussianMixture.random(dim=2, components=2)
    assert not has_row_state(gmm) and not has_row_state(lambda x, s: x)
    assert gmm.take(torch.arange(2)) is gmm
    assert has_row_state(Conditioned(gmm, torch.zeros(2)))
    assert has_row_state(CountingDenoiser(gmm))  # a wrapper may hold per-sample state


@pytest.fixture(scope="module")
def labelled() -> ClassConditionalMixture:
    return ClassConditionalMixture.random(dim=3, components=3, spread=1.5, seed=7)


CASES = [
    ("ddim", {}),
    ("edm_heun", {}),
    ("pmm", {}),
    ("dpmpp_2m", {}),
    ("paradigms", {"window": 4, "tol": 0.05}),
    ("srds", {}),
]


@pytest.mark.parametrize("guided", [False, True], ids=["cond", "guided"])
@pytest.mark.parametrize(("name", "options"), CASES, ids=[c[0] for c in CASES])
def test_chunked_and_clipped_conditional_equal_unwrapped(labelled, name, options, guided):
    labels = torch.tensor([2, 0, 1, 1, 2])
    n = labels.numel()
    extra = {"guidance": 2.5, "uncond": torch.tensor([NULL])} if guided else {}
    kw = dict(steps=6, shape=(n, labelled.dim), seeds=range(n), dtype=F64, **options)
    ref = sl.sample(labelled, name, cond=labels, **kw, **extra)
    model = condition(labelled, n, cond=labels, **extra)
    for wrapped in (
        ChunkedDenoiser(model, 2),
        ClippedDenoiser(model, -1e9, 1e9),
        ClippedDenoiser(ChunkedDenoiser(model, 3), -1e9, 1e9),
    ):
        got = sl.sample(wrapped, name, **kw)
        assert torch.equal(got.x, ref.x), type(wrapped).__name__
        assert got.nfe == ref.nfe
