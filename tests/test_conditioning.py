"""Per-sample conditioning and classifier-free guidance (samplers/conditioning.py).

Every registered sampler is run with conditioning and with guidance: a batch equals each
sample run alone, so each row's conditioning follows it through gathered rows (pmm,
paradigms), stacked copies (srds, rmm_parallel) and chunks. Exact answers come from the
class-conditional Gaussian mixture (each class a Gaussian: its conditional PF-ODE is solved
in closed form, and the guided denoiser is an analytic combination).
"""

from __future__ import annotations

import pytest
import torch

import samplerlab as sl
from samplerlab.analytic import ClassConditionalMixture, GaussianMixture
from samplerlab.samplers import SamplerError
from samplerlab.samplers.conditioning import Conditioned, Guided, condition
from samplerlab.samplers.denoisers import CountingDenoiser, EDMDenoiser, chunked, from_eps

F64 = torch.float64
NULL = ClassConditionalMixture.NULL


@pytest.fixture(scope="module")
def model() -> ClassConditionalMixture:
    return ClassConditionalMixture.random(dim=3, components=3, spread=1.5, seed=7)


def _cases() -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    for name, spec in sl.SAMPLERS.items():
        out.append((name, {}))
        out += [(name, {opt: 1.0}) for opt in spec.stochastic_options]
    # Per-sample windows that differ in length, and chunks of them.
    out += [("paradigms", {"steps": 24, "window": 5, "tol": 0.05})]
    out += [("paradigms", {"steps": 24, "window": 5, "tol": 0.05, "max_rows": 3})]
    out += [("srds", {"steps": 9, "blocks": 3, "max_rows": 5})]
    return out


CASES = _cases()
IDS = [f"{n}-{o}" if o else n for n, o in CASES]
LABELS, SEEDS = torch.tensor([2, 0, 1, 2]), [11, 3, 42, 7]
# (cond, guidance, uncond, interval) per mode; uncond: one null row, or one per sample.
MODES = {
    "cond": lambda k: {"cond": LABELS[k]},
    "guided": lambda k: {"cond": LABELS[k], "guidance": 2.5, "uncond": torch.tensor([NULL])},
    "guided-per-sample": lambda k: {
        "cond": LABELS[k],
        "guidance": torch.tensor([3.0, 1.0, 0.5, 2.0])[k],
        "uncond": torch.tensor([NULL, 2, 0, 1])[k],  # per sample (a "negative" class)
        "guidance_interval": (0.3, 4.0),
    },
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_batch_equals_each_sample_alone(model, name, options, mode):
    """Every sampler gives each sample of a conditioned (guided) batch what it gives that
    sample alone, with its own label (and scale): the conditioning follows the rows."""
    kw = {"steps": 6, "dtype": F64, **options}
    batch = sl.sample(model, name, shape=(4, 3), seeds=SEEDS, **MODES[mode](slice(None)), **kw)
    for k in range(4):
        one = MODES[mode](slice(k, k + 1))
        row = sl.sample(model, name, shape=(1, 3), seeds=SEEDS[k : k + 1], **one, **kw).x
        err = float((batch.x[k : k + 1] - row).abs().max())
        assert err <= 1e-8 * max(1.0, float(row.abs().max())), f"sample {k}: {err:.3e}"
    # The labels matter (a sampler that dropped the conditioning would pass the above).
    other = sl.sample(model, name, shape=(4, 3), seeds=SEEDS, **kw).x
    assert float((batch.x - other).abs().max()) > 1e-3


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_guidance_one_is_conditional_sampling(model, name, options):
    kw = {"steps": 6, "dtype": F64, "shape": (4, 3), "seeds": SEEDS, **options}
    cond = sl.sample(model, name, cond=LABELS, **kw)
    one = sl.sample(model, name, cond=LABELS, guidance=1.0, uncond=torch.tensor([NULL]), **kw)
    assert torch.equal(one.x, cond.x) and one.nfe == cond.nfe and one.rounds == cond.rounds
    ones = sl.sample(model, name, cond=LABELS, guidance=torch.ones(4), uncond=LABELS * 0, **kw)
    assert torch.equal(ones.x, cond.x)


@pytest.mark.parametrize("edm", [False, True])
@pytest.mark.parametrize("name", ["edm_heun", "dpmpp_2m"])
def test_conditional_endpoints_are_the_exact_ode_solution(name, edm):
    """Each class is a Gaussian: its conditional PF-ODE endpoint is known in closed form;
    a good ODE sampler at many steps reaches it for every sample's own class."""
    m = ClassConditionalMixture.random(dim=4, components=3, spread=1.5, seed=3, edm=edm)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 1, 0])
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    res = sl.sample(m, name, steps=200, shape=(8, 4), noise=z, cond=labels, dtype=F64)
    sigma0, last = float(res.sigmas[0]), float(res.sigmas[-2])
    x0 = z * (sigma0**2 + m.prior_std**2) ** 0.5
    # The exact ODE state at the grid's last positive sigma, then the denoise step to 0.
    at_last = m.ode_solution(x0, labels, sigma0, last)
    exact = m(at_last, torch.full((8,), last, dtype=F64), labels)
    err = float((res.x - exact).abs().max())
    assert err < 5e-4, err  # measured: 7.5e-5 to 2.0e-4
    # Not the unconditional endpoints: a sampler that ignored cond would fail this test.
    free = sl.sample(m, name, steps=200, shape=(8, 4), noise=z, dtype=F64).x
    assert float((free - exact).abs().max()) > 50 * err


@pytest.mark.parametrize("skip_outside", [None, False, True])
def test_guided_denoiser_is_the_analytic_combination(model, skip_outside):
    """D = D_u + w (D_c - D_u), with D_c the class's Gaussian denoiser and D_u the mixture's;
    outside the interval (and where w = 1) D = D_c exactly."""
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    w = torch.tensor([2.0, 4.0, 1.0, 0.5, 7.0, 3.0])
    x = 2 * torch.randn(6, 3, generator=g, dtype=F64)
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0, 10.0], dtype=F64)
    mixture = GaussianMixture(model.weights, model.means, model.stds)
    d_u = mixture(x, sigma)
    d_c = torch.cat(
        [model.component(int(k))(x[i : i + 1], sigma[i : i + 1]) for i, k in enumerate(labels)]
    )
    den = Guided(model, labels, torch.tensor([NULL]), w, skip_outside=skip_outside)
    torch.testing.assert_close(den(x, sigma), d_u + w[:, None] * (d_c - d_u), rtol=0, atol=1e-12)
    inside = (sigma > 0.4) & (sigma <= 2.0) & (w != 1)
    lim = Guided(
        model, labels, torch.tensor([NULL]), w, interval=(0.4, 2.0), skip_outside=skip_outside
    )
    out = lim(x, sigma)
    torch.testing.assert_close(
        out[inside], (d_u + w[:, None] * (d_c - d_u))[inside], rtol=0, atol=1e-12
    )
    torch.testing.assert_close(out[~inside], d_c[~inside], rtol=0, atol=1e-12)
    # Unconditional rows evaluated: only the guided ones when skipping (the CPU default).
    paid = 6 if skip_outside is False else int(inside.sum())
    assert lim.extra_rows.count == paid


def test_nfe_counts_both_rows_and_the_interval_saves(model):
    """NFE per sample is honest: 2 per guided evaluation; outside the interval (on the CPU,
    where the rows are chosen without a device sync) only the conditional row is paid."""
    kw = {"steps": 10, "shape": (4, 3), "dtype": F64, "cond": LABELS}
    null = torch.tensor([NULL])
    plain = sl.sample(model, "ddim", **kw)
    guided = sl.sample(model, "ddim", guidance=3.0, uncond=null, **kw)
    assert plain.nfe == 10 and guided.nfe == 20 and guided.rounds == plain.rounds == 10
    lo, hi = 0.5, 5.0
    lim = sl.sample(model, "ddim", guidance=3.0, uncond=null, guidance_interval=(lo, hi), **kw)
    evaluated = lim.sigmas[:-1]  # DDIM evaluates D once at each grid point but the last
    inside = int(((evaluated > lo) & (evaluated <= hi)).sum())
    assert 0 < inside < 10 and lim.nfe == 10 + inside
    per = sl.sample(model, "ddim", guidance=torch.tensor([3.0, 1.0, 1.0, 2.0]), uncond=null, **kw)
    assert per.nfe == 10 + 10 * 2 / 4
    # Chunked calls (srds' max_rows) count the same rows as unchunked ones.
    srds = {**kw, "steps": 9, "blocks": 3, "guidance": 3.0, "uncond": null}
    a, b = sl.sample(model, "srds", **srds), sl.sample(model, "srds", max_rows=5, **srds)
    assert a.nfe == b.nfe and a.nfe > 0 and torch.allclose(a.x, b.x, rtol=0, atol=1e-12)


def test_counting_and_chunking_wrap_a_guided_denoiser(model):
    den = condition(model, 4, cond=LABELS, guidance=2.0, uncond=torch.tensor([NULL]))
    counter = CountingDenoiser(chunked(den, 3))
    x, sigma = torch.randn(8, 3, dtype=F64), torch.full((8,), 1.5, dtype=F64)
    out = counter(x, sigma)  # two copies of the batch, in chunks of 3 rows
    assert counter.rounds == 1 and counter.rows == 16
    torch.testing.assert_close(out, torch.cat([den(x[:4], sigma[:4]), den(x[4:], sigma[4:])]))
    assert isinstance(condition(model, 4, cond=LABELS), Conditioned)
    assert condition(model, 4) is model


def test_dict_conditioning_reaches_model_functions_aligned():
    """from_eps / EDM networks receive the rows of a dict of tensors aligned with x's rows as
    a third argument (and are called with two arguments without cond)."""
    ac = torch.linspace(0.9999, 0.002, 1000, dtype=F64)
    calls: list[int] = []

    def eps_fn(x, t, *cond):
        calls.append(2 + len(cond))
        if not cond:
            return 0.5 * x
        c = cond[0]
        assert c["shift"].shape[0] == x.shape[0] == c["scale"].shape[0]
        return c["scale"][:, None] * x + 0.1 * c["shift"]

    den = from_eps(eps_fn, ac, data_shape=(2,))
    sl.sample(den, "ddim", steps=3, shape=(2, 2), dtype=F64)
    assert set(calls) == {2}
    cond = {"scale": torch.tensor([0.1, 0.3, 0.5]), "shift": torch.randn(3, 2, dtype=F64)}
    kw = {"steps": 8, "dtype": F64, "seeds": [4, 5, 6]}
    for name in ("pmm", "paradigms", "srds", "rmm_parallel"):
        batch = sl.sample(den, name, shape=(3, 2), cond=cond, **kw).x
        for k in range(3):
            one = {key: v[k : k + 1] for key, v in cond.items()}
            row = sl.sample(den, name, shape=(1, 2), cond=one, **{**kw, "seeds": [4 + k]}).x
            torch.testing.assert_close(batch[k : k + 1], row, rtol=0, atol=1e-10)
    assert set(calls) == {2, 3}

    def net(x, c_noise, cond):
        return x * cond[:, None]

    edm = EDMDenoiser(net, data_shape=(2,))
    w = torch.tensor([1.0, 2.0])
    a = sl.sample(edm, "edm_heun", steps=4, shape=(2, 2), cond=w, dtype=F64).x
    b = sl.sample(edm, "edm_heun", steps=4, shape=(2, 2), cond=w.flip(0), dtype=F64).x
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"cond": torch.tensor([0, 1])}, "cond has 2 rows; it needs 4"),
        ({"cond": torch.tensor(1)}, "cond must be a tensor with one row per sample"),
        ({"cond": [0, 1, 2, 0]}, "cond must be a tensor or a dict of tensors"),
        ({"guidance": 2.0}, "guidance= needs cond="),
        ({"uncond": torch.tensor([NULL])}, "uncond= needs cond="),
        ({"cond": LABELS, "guidance": 2.0}, "guidance= needs uncond="),
        ({"cond": LABELS, "guidance": torch.ones(3), "uncond": LABELS}, "guidance must be"),
        ({"cond": LABELS, "guidance": float("nan"), "uncond": LABELS}, "NaN"),
        ({"cond": LABELS, "guidance": 2.0, "uncond": torch.zeros(4)}, "uncond is torch.float32"),
        ({"cond": LABELS, "guidance": 2.0, "uncond": torch.zeros(2).long()}, "uncond has 2 rows"),
        ({"cond": {"y": LABELS}, "guidance": 2.0, "uncond": {"z": LABELS}}, "keys of cond"),
        (
            {"cond": LABELS, "guidance": 2.0, "uncond": LABELS, "guidance_interval": (3, 1)},
            "sigma_lo < sigma_hi",
        ),
        ({"cond": LABELS, "guidance_interval": (0.1, 1)}, "guidance_interval= needs guidance="),
    ],
)
def test_bad_conditioning_is_one_line(model, kw, match):
    with pytest.raises(SamplerError, match=match):
        sl.sample(model, "ddim", steps=3, shape=(4, 3), **kw)


def test_a_denoiser_without_cond_is_refused():
    mixture = GaussianMixture.random(dim=3, components=2)
    with pytest.raises(SamplerError, match=r"needs a conditional denoiser D\(x, sigma, cond\)"):
        sl.sample(mixture, "ddim", steps=3, shape=(4, 3), cond=LABELS)


@pytest.mark.parametrize("name", ["pmm", "srds"])
def test_sharded_rows_keep_their_conditioning(model, name):
    """Conditioned and guided rows split over replicas (ShardedDenoiser) keep their rows of
    cond and uncond; NFE counts every replica's rows."""
    from samplerlab.samplers.sharding import ShardedDenoiser

    sharded = ShardedDenoiser([model, model], ["cpu", "cpu"])
    kw = {"steps": 9, "shape": (4, 3), "dtype": F64, "seeds": SEEDS, "cond": LABELS}
    kw |= {"guidance": torch.tensor([2.0, 1.0, 3.0, 0.5]), "uncond": torch.tensor([NULL])}
    try:
        ref = sl.sample(model, name, **kw)
        got = sl.sample(sharded, name, **kw)
        torch.testing.assert_close(got.x, ref.x, rtol=0, atol=1e-12)
        assert got.nfe == ref.nfe and got.rounds == ref.rounds
    finally:
        sharded.close()


def test_readme_conditioning_block_runs_as_written():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### Conditioning and guidance") :]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    seen: list[torch.Tensor] = []

    def eps_fn(x_vp, t, cond):
        seen.append(cond)
        return 0.1 * x_vp + 0.01 * cond.to(x_vp)[:, None, None, None]

    ac = torch.linspace(0.9999, 0.002, 1000, dtype=F64)
    namespace = {"eps_fn": eps_fn, "alphas_cumprod": ac}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["res"].x.shape == (4, 3, 32, 32)
    assert any(len(c) == 8 and int(c[-1]) == 10 for c in seen)  # cond and null rows together


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["dpmpp_2m", "pmm", "srds", "paradigms"])
def test_cuda_guided_equals_cpu_without_a_sync_per_call(model, name):
    """On CUDA every row pays for both rows (no host sync to choose them); the samples equal
    the CPU's, where rows outside the interval skip the unconditional row."""
    kw = {"steps": 8, "shape": (4, 3), "seeds": SEEDS, "dtype": F64, "cond": LABELS}
    kw |= {"guidance": torch.tensor([3.0, 1.0, 0.5, 2.0]), "uncond": torch.tensor([NULL])}
    kw |= {"guidance_interval": (0.3, 4.0)}
    cpu = sl.sample(model, name, **kw)
    gpu = sl.sample(model, name, device="cuda", **kw)
    torch.testing.assert_close(gpu.x.cpu(), cpu.x, rtol=1e-9, atol=1e-9)
    assert gpu.nfe > cpu.nfe
    # The wrapper itself issues no device sync (a network of device tensors only).
    net = lambda x, sigma, c: x * (1 + c.to(x.dtype)[:, None]) / (1 + sigma[:, None] ** 2)
    den = Guided(
        net,
        LABELS.cuda(),
        torch.tensor([NULL]).cuda(),
        torch.ones(4).cuda() * 2,
        interval=(0.3, 4.0),
    )
    x, sigma = torch.randn(8, 3, device="cuda"), torch.linspace(0.1, 5, 8, device="cuda")
    den(x, sigma)  # state copied to the device once
    torch.cuda.set_sync_debug_mode("error")
    try:
        den(x, sigma)
    finally:
        torch.cuda.set_sync_debug_mode("default")
