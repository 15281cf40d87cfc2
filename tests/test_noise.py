"""Counter-based per-sample noise: known answers, purity, independence and statistics."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import samplerlab as sl
from samplerlab.samplers.counters import philox4x32, splitmix64_outputs, stream_keys
from samplerlab.samplers.noise import DEVICE_TOL, PerSampleNoise

F64, CPU = torch.float64, torch.device("cpu")
KINDS = ["splitmix", "philox"]
M64 = (1 << 64) - 1

# Random123 1.14 kat_vectors, the three philox4x32_10 lines: counter[4] key[2] -> output[4].
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


# Independent pure-Python references (big integers, no torch).
def py_philox(ctr, key, rounds=10):
    c, k = list(ctr), list(key)
    for r in range(rounds):
        if r:
            k = [(k[0] + 0x9E3779B9) & 0xFFFFFFFF, (k[1] + 0xBB67AE85) & 0xFFFFFFFF]
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k[1], p0 & 0xFFFFFFFF]
    return c


def py_mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def py_splitmix(seed, i):
    return py_mix((seed + (i + 1) * 0x9E3779B97F4A7C15) & M64)


def py_words(seed, draw, count):
    """The 64-bit words ``mix(R + C_p)`` of draw ``draw`` of ``seed``, ``p < count``."""
    w = py_philox((0, 0, 0, 0), (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF))
    key = w[0] | (w[1] << 32)
    row = py_mix((key + py_splitmix(0x243F6A8885A308D3, draw)) & M64)
    return [py_mix((row + py_splitmix(0x13198A2E03707344, p)) & M64) for p in range(count)]


def u64(t: torch.Tensor) -> list[int]:
    return [int(v) & M64 for v in t.flatten()]


@pytest.mark.parametrize(("ctr", "key", "want"), PHILOX_KAT)
def test_philox4x32_10_known_answers(ctr, key, want):
    got = philox4x32(ctr, key)
    assert [int(w) for w in got] == list(want)
    assert py_philox(ctr, key) == list(want)
    # Vectorised: the three vectors as one batch of counters and keys.
    cs = [torch.tensor([v[0][i] for v in PHILOX_KAT]) for i in range(4)]
    ks = [torch.tensor([v[1][i] for v in PHILOX_KAT]) for i in range(2)]
    out = torch.stack(philox4x32(cs, ks), 1)
    assert out.tolist() == [list(v[2]) for v in PHILOX_KAT]


def test_splitmix64_known_answers():
    # The reference SplitMix64 sequences (Rosetta Code "Pseudo-random numbers/Splitmix64").
    assert u64(splitmix64_outputs(1234567, torch.arange(5))) == [
        6457827717110365317,
        3203168211198807973,
        9817491932198370423,
        4593380528125082431,
        16408922859458223821,
    ]
    assert u64(splitmix64_outputs(0, torch.arange(3))) == [
        0xE220A8397B1DCDAF,
        0x6E789E6AA1B965F4,
        0x06C45D188009454F,
    ]


def test_stream_keys_are_philox_of_the_seed():
    seeds = [0, 1, 2**32 + 5, 2**64 - 1, -1, 2**70 + 3]
    got = u64(stream_keys(seeds))
    for s, k in zip(seeds, got, strict=True):
        w = py_philox((0, 0, 0, 0), (s & 0xFFFFFFFF, (s >> 32) & 0xFFFFFFFF))
        assert k == w[0] | (w[1] << 32)
    assert got[3] == got[4], "seeds are taken mod 2^64"


def test_uniforms_are_the_reference_words_bit_for_bit():
    """float64 uniforms are the top 53 bits of the reference 64-bit words (draws 0 and 1)."""
    seeds = [7, 123456789, 2**40 + 1]
    src = PerSampleNoise(seeds)
    for draw in range(2):
        u = src.rand((3, 5), device=CPU, dtype=F64)
        for k, s in enumerate(seeds):
            want = [(w >> 11) * 2.0**-53 for w in py_words(s, draw, 5)]
            assert u[k].tolist() == want


def test_normals_are_box_muller_of_the_reference_words():
    seeds = [3, 99]
    z = PerSampleNoise(seeds).randn((2, 3, 3), device=CPU, dtype=F64).view(2, 9)
    for k, s in enumerate(seeds):
        words = py_words(s, 0, 5)
        want = []
        for fn in (math.cos, math.sin):
            for w in words:
                r = math.sqrt(-2 * math.log(((w & 0xFFFFFFFF) + 1) * 2.0**-32))
                hi = (w >> 32) - (1 << 32) * (w >> 63)  # the signed high word
                want.append(r * fn(2 * math.pi * hi * 2.0**-32))
        assert z[k].tolist() == pytest.approx(want[:9], abs=1e-14, rel=0)


def test_philox_kind_uniforms_are_philox_words():
    src = PerSampleNoise([5, 6], kind="philox")
    src.randn((2, 3), device=CPU, dtype=F64)  # draw 0
    u = src.rand((2, 6), device=CPU, dtype=F64)  # draw 1: blocks 0 and 1
    for k, s in enumerate([5, 6]):
        words = []
        for b in range(2):
            words += py_philox((b, 1, 0, 0), (s, 0))
        assert u[k].tolist() == [w * 2.0**-32 for w in words[:6]]


@pytest.mark.parametrize("kind", [*KINDS, "generator"])
def test_a_row_depends_only_on_its_seed(kind):
    """Same seed, same row: in any batch, at any position, in any chunk of the batch."""
    seeds = [11, 12, 13, 14, 15]
    full = PerSampleNoise(seeds, kind=kind)
    draws = [full.randn((5, 2, 3), device=CPU, dtype=F64) for _ in range(3)]
    draws.append(full.rand((5, 4), device=CPU, dtype=F64))
    for chunk in ([13], [15, 11], [12, 14, 13]):
        part = PerSampleNoise(chunk, kind=kind)
        rows = [seeds.index(s) for s in chunk]
        for d in draws[:3]:
            assert torch.equal(part.randn((len(chunk), 2, 3), device=CPU, dtype=F64), d[rows])
        assert torch.equal(part.rand((len(chunk), 4), device=CPU, dtype=F64), draws[3][rows])


@pytest.mark.parametrize("kind", KINDS)
def test_subsets_continue_each_rows_stream(kind):
    a = PerSampleNoise([1, 2, 3], kind=kind)
    a.randn((3, 4), device=CPU, dtype=F64)
    sub = a.subset([2, 0])
    s1 = sub.randn((2, 4), device=CPU, dtype=F64)  # draw 1 of seeds 3 and 1
    mixed = a.randn((3, 4), device=CPU, dtype=F64)  # rows at draws 2, 1, 2
    ref = PerSampleNoise([1, 2, 3], kind=kind)
    _, d1, d2 = (ref.randn((3, 4), device=CPU, dtype=F64) for _ in range(3))
    assert torch.equal(s1, d1[[2, 0]])
    assert torch.equal(mixed, torch.stack([d2[0], d1[1], d2[2]]))


@pytest.mark.parametrize("kind", KINDS)
def test_float32_is_the_float64_draw_rounded(kind):
    z64 = PerSampleNoise(range(50), kind=kind).randn((50, 33), device=CPU, dtype=F64)
    z32 = PerSampleNoise(range(50), kind=kind).randn((50, 33), device=CPU, dtype=torch.float32)
    assert float((z32.double() - z64).abs().max()) < 1e-5
    u64_ = PerSampleNoise(range(50), kind=kind).rand((50, 33), device=CPU, dtype=F64)
    u32 = PerSampleNoise(range(50), kind=kind).rand((50, 33), device=CPU, dtype=torch.float32)
    assert float((u32.double() - u64_).abs().max()) < 2**-24
    assert bool((u32 <= u64_).all()), "float32 uniforms truncate the float64 ones"
    half = PerSampleNoise(range(50), kind=kind).rand((50, 33), device=CPU, dtype=torch.bfloat16)
    assert float(half.max()) < 1.0


def test_different_draw_shapes_and_odd_sizes():
    """Odd row sizes take a prefix of the pairs' cosines then their sines; no NaN/Inf; the
    same draw with the same shape is reproducible and distinct draws differ."""
    a = PerSampleNoise([4, 5]).randn((2, 7), device=CPU, dtype=F64)
    b = PerSampleNoise([4, 5]).randn((2, 7), device=CPU, dtype=F64)
    assert torch.equal(a, b) and bool(torch.isfinite(a).all())
    src = PerSampleNoise([4, 5])
    first, second = (src.randn((2, 7), device=CPU, dtype=F64) for _ in range(2))
    assert float((first - second).abs().min()) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_normal_moments_and_ks(kind):
    z = PerSampleNoise(range(2000), kind=kind).randn((2000, 256), device=CPU, dtype=F64)
    x = z.flatten().numpy()
    n = x.size  # 512000: standard errors of mean / var / skew / excess kurtosis
    assert abs(x.mean()) < 5 / math.sqrt(n)
    assert abs(x.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(x)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(x)) < 5 * math.sqrt(24 / n)
    assert stats.kstest(x, "norm").pvalue > 1e-3
    # Tails: the fraction beyond 3 sigma (expected 0.27%) within 5 standard errors.
    p3 = 2 * stats.norm.sf(3)
    assert abs((abs(x) > 3).mean() - p3) < 5 * math.sqrt(p3 / n)


@pytest.mark.parametrize("kind", KINDS)
def test_uniform_moments_and_ks(kind):
    u = PerSampleNoise(range(1000), kind=kind).rand((1000, 200), device=CPU, dtype=F64)
    x = u.flatten().numpy()
    assert x.min() >= 0 and x.max() < 1
    assert abs(x.mean() - 0.5) < 5 * math.sqrt(1 / 12 / x.size)
    assert stats.kstest(x, "uniform").pvalue > 1e-3


def _offdiag_corr(a: torch.Tensor) -> torch.Tensor:
    c = torch.corrcoef(a)
    return c[~torch.eye(c.shape[0], dtype=torch.bool)]


@pytest.mark.parametrize("kind", KINDS)
def test_no_correlation_between_neighbouring_seeds(kind):
    """1500 streams of consecutive seeds: every pairwise correlation of their 512 normals
    looks like N(0, 1/512) (max |r| and the spread of all 1.1M off-diagonal entries)."""
    m = 512
    z = PerSampleNoise(range(10_000, 11_500), kind=kind).randn((1500, m), device=CPU, dtype=F64)
    r = _offdiag_corr(z) * math.sqrt(m)
    assert float(r.abs().max()) < 6.0
    assert abs(float(r.mean())) < 0.01 and abs(float(r.std()) - 1) < 0.02


@pytest.mark.parametrize("kind", KINDS)
def test_no_correlation_between_draws_and_elements(kind):
    """Draw j vs draw j+1 of each stream, and neighbouring elements (incl. a pair's cosine
    and sine halves) across 4000 streams: correlations at the N(0, 1/n) level."""
    n = 4000
    src = PerSampleNoise(range(n), kind=kind)
    draws = torch.stack([src.randn((n, 64), device=CPU, dtype=F64) for _ in range(40)], 1)
    # Draw-to-draw: every (element, lag-1 draw) pair pooled over streams.
    a, b = draws[:, :-1].reshape(-1), draws[:, 1:].reshape(-1)
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 5 / math.sqrt(a.numel())
    # The 40 draws of one element across streams: a 40x40 correlation matrix.
    r = _offdiag_corr(draws[:, :, 5].T) * math.sqrt(n)
    assert float(r.abs().max()) < 5.5
    # Elements within a draw: 64x64 correlation matrix over streams (cos/sin pairs at +32).
    r = _offdiag_corr(draws[:, 0].T) * math.sqrt(n)
    assert float(r.abs().max()) < 5.5
    # A pair's two normals are independent, not only uncorrelated: their squares too.
    c, s = draws[:, :, :32].reshape(-1) ** 2, draws[:, :, 32:].reshape(-1) ** 2
    assert abs(float(torch.corrcoef(torch.stack([c, s]))[0, 1])) < 5 / math.sqrt(c.numel())


def test_bad_input_is_one_clear_line():
    with pytest.raises(sl.SamplerError, match="unknown noise kind 'mt'; valid: splitmix, philox"):
        PerSampleNoise([1], kind="mt")
    with pytest.raises(sl.SamplerError, match="noise for 2 rows requested from 3 seeds"):
        PerSampleNoise([1, 2, 3]).randn((2, 2), device=CPU, dtype=F64)


def test_generator_kind_is_the_old_stream():
    """``kind="generator"``: row k is torch.randn from a generator seeded with seeds[k]."""
    src = PerSampleNoise([8, 9], kind="generator")
    z = src.randn((2, 5), device=CPU, dtype=F64)
    for k, s in enumerate([8, 9]):
        g = torch.Generator().manual_seed(s)
        assert torch.equal(z[k], torch.randn(5, generator=g, dtype=F64))


def test_sample_noise_kind_option(gmm_small):
    den = gmm_small
    a = sl.sample(den, "ddpm", steps=4, shape=(3, den.dim), seeds=[1, 2, 3], dtype=F64)
    b = sl.sample(
        den, "ddpm", steps=4, shape=(3, den.dim), seeds=[1, 2, 3], dtype=F64, noise_kind="generator"
    )
    assert float((a.x - b.x).abs().max()) > 1e-3, "the two generators give different samples"
    # The generator kind reproduces a hand-seeded initial noise.
    g = [torch.Generator().manual_seed(s) for s in [1, 2, 3]]
    z = torch.stack([torch.randn(den.dim, generator=gi, dtype=F64) for gi in g])
    c = sl.sample(
        den, "ddim", steps=4, shape=(3, den.dim), seeds=[1, 2, 3], dtype=F64, noise_kind="generator"
    )
    d = sl.sample(den, "ddim", steps=4, shape=(3, den.dim), noise=z, dtype=F64)
    assert torch.equal(c.x, d.x)
    with pytest.raises(sl.SamplerError, match="unknown noise kind"):
        sl.sample(den, "ddim", steps=4, shape=(3, den.dim), noise_kind="numpy")


@pytest.fixture
def gmm_small():
    from samplerlab.analytic import GaussianMixture

    return GaussianMixture.default()


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_draws_match_cpu_draws(kind, dtype):
    """Integer work is exact on both; log/cos/sin round within DEVICE_TOL."""
    seeds = range(3000)
    cpu = PerSampleNoise(seeds, kind=kind)
    gpu = PerSampleNoise(seeds, kind=kind)
    for shape in [(3000, 64), (3000, 3, 5, 5)]:
        a = cpu.randn(shape, device=CPU, dtype=dtype)
        b = gpu.randn(shape, device=torch.device("cuda"), dtype=dtype)
        assert b.is_cuda
        assert float((a - b.cpu()).abs().max()) <= DEVICE_TOL[dtype]
    ua = cpu.rand((3000, 7), device=CPU, dtype=dtype)
    ub = gpu.rand((3000, 7), device=torch.device("cuda"), dtype=dtype)
    assert torch.equal(ua, ub.cpu())


STOCHASTIC = [name for name, spec in sl.samplers.SAMPLERS.items() if not spec.deterministic()]


@pytest.mark.parametrize("name", STOCHASTIC)
def test_rank_shards_equal_the_single_run(gmm_small, name):
    """What each DDP rank samples (its shard ``seeds[rank::world]``) is the single-process
    run's rows, for every stochastic sampler (the counter noise on its sampling device)."""
    den, seeds = gmm_small, list(range(40, 47))
    kw = {"steps": 4, "dtype": F64}
    full = sl.sample(den, name, shape=(len(seeds), den.dim), seeds=seeds, **kw).x
    for rank in range(2):
        shard = seeds[rank::2]
        part = sl.sample(den, name, shape=(len(shard), den.dim), seeds=shard, **kw).x
        torch.testing.assert_close(part, full[rank::2], rtol=1e-12, atol=1e-12)
