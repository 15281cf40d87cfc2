"""IIA samplers: defaults reproduce their bases, the least-squares helpers, coefficient files."""

from __future__ import annotations

import pytest
import torch

import samplerlab as sl
from samplerlab.analytic import GaussianMixture
from samplerlab.iia import IIAFileError, fingerprint, load, save
from samplerlab.samplers import iia
from samplerlab.samplers.api import build_sigmas
from samplerlab.samplers.core import SamplerError
from samplerlab.samplers.edm import step_heun
from samplerlab.samplers.registry import get_sampler

F64 = torch.float64


@pytest.mark.parametrize("name", list(iia.BASES))
@pytest.mark.parametrize("steps", [1, 2, 3, 7])
def test_defaults_reproduce_base(gmm, name, steps):
    base = iia.BASES[name]
    kw = {"shape": (6, gmm.dim), "dtype": F64, "seeds": range(6)}
    a = sl.sample(gmm, base, steps=steps, **kw)
    b = sl.sample(gmm, name, steps=steps, **kw)
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe
    # Default coefficients on every fittable step (r = 2 past terms all zero) = the base.
    for r in (0, 1, 2):
        c = iia.IIACoefficients.defaults(name, a.sigmas, r=r)
        d = sl.sample(gmm, name, steps=steps, coeffs=c, **kw)
        torch.testing.assert_close(d.x, a.x, rtol=1e-12, atol=1e-12)
        assert d.nfe == a.nfe


def test_guided_form_default_is_ddim(gmm):
    kw = {"shape": (4, gmm.dim), "dtype": F64, "steps": 5}
    a = sl.sample(gmm, "ddim", **kw)
    c = iia.IIACoefficients.defaults("iia_ddim", a.sigmas, form="guided")
    assert c.mask.all() and c.coeffs.shape == (5, 1)
    torch.testing.assert_close(sl.sample(gmm, "iia_ddim", coeffs=c, **kw).x, a.x)
    # A nonzero beta adds beta * e_i at every step, including step 0 (eq. 8).
    c2 = iia.IIACoefficients(
        "iia_ddim",
        c.sigmas,
        torch.zeros(5, 1, dtype=F64).index_fill_(0, torch.tensor([0]), 0.1),
        c.mask,
        "guided",
    )
    x0 = sl.sample(gmm, "ddim", steps=5, shape=(4, gmm.dim), dtype=F64, sigmas=c.sigmas).x
    x1 = sl.sample(gmm, "iia_ddim", coeffs=c2, **kw).x
    assert not torch.allclose(x0, x1)


def test_per_row_grids_without_coeffs(gmm):
    s = torch.stack(
        [
            build_sigmas(gmm, get_sampler("edm_heun"), 4),
            build_sigmas(gmm, get_sampler("edm_heun"), 4) * 0.5,
        ]
    ).T.contiguous()
    s[-1] = 0
    x = torch.randn(2, gmm.dim, dtype=F64, generator=torch.Generator().manual_seed(0)) * 10
    for name, base in iia.BASES.items():
        ref = get_sampler(base)(gmm, x, s)
        torch.testing.assert_close(get_sampler(name)(gmm, x, s), ref, rtol=0, atol=0)


def test_registry_entries():
    for name, base in iia.BASES.items():
        spec, b = get_sampler(name), get_sampler(base)
        assert spec.needs_coeffs and spec.deterministic()
        assert [spec.nfe(n) for n in (3, 10, 20)] == [b.nfe(n) for n in (3, 10, 20)]
        assert spec.option_names() == ["coeffs", "allow_fingerprint_mismatch"]


def test_edm_lemma_one_matches_heun(gaussian):
    # eq. 17: Heun = x + h/t (x - D) + h/(2 t') (D - D~) on one step.
    x = torch.randn(5, gaussian.dim, dtype=F64, generator=torch.Generator().manual_seed(1)) * 3
    s, s1 = torch.full((5,), 3.0, dtype=F64), torch.full((5,), 1.7, dtype=F64)
    t = iia.get_form("iia_edm").step(gaussian, x, s, s1, None, final=False, r=1)
    c0 = iia.get_form("iia_edm").default_coefficients(torch.tensor([3.0, 1.7, 0.0]), r=1)[0]
    torch.testing.assert_close(t.combine(c0.tolist()), step_heun(gaussian, x, s, s1))


def test_vp_coordinates_equivalence(gmm):
    # The EDM-coordinate update with c equals the paper's VP update with vp_coefficients(c),
    # divided by alpha_{i+1}: z_{i+1} = DDIM_vp(z_i) + phi0 dD + phi1 de (eq. 6), and
    # z_{i+1} = Gamma_vp(z_i) + varphi0 z_i + varphi1 D_i (eq. 23).
    g = torch.Generator().manual_seed(3)
    sig = torch.tensor([5.0, 2.0, 0.7, 0.0], dtype=F64)
    x = torch.randn(4, gmm.dim, dtype=F64, generator=g) * 5
    for name in ("iia_ddim", "iia_dpmpp_2m"):
        c = torch.randn(3, 2, dtype=F64, generator=g) * 0.1
        coeffs = iia.IIACoefficients(name, sig, c, torch.tensor([False, True, True]))
        vp = coeffs.vp_coefficients()
        alpha = (1 + sig**2).rsqrt()
        xs, hist = x, None
        for i in range(3):
            s, s1 = (
                torch.full((4,), float(sig[i]), dtype=F64),
                torch.full((4,), float(sig[i + 1]), dtype=F64),
            )
            t = iia.get_form(name).step(gmm, xs, s, s1, hist, final=i == 2)
            if i == 0:
                xs, hist = t.base, t.history
                continue
            x_edm = t.combine(c[i].tolist())
            z_i, z_base = alpha[i] * xs, alpha[i + 1] * t.base
            if name == "iia_ddim":
                z_vp = z_base + vp[i, 0] * t.quantities[0] + vp[i, 1] * t.quantities[1]
            else:
                z_vp = z_base + vp[i, 0] * z_i + vp[i, 1] * t.quantities[1]
            torch.testing.assert_close(alpha[i + 1] * x_edm, z_vp)
            xs, hist = x_edm, t.history


def test_least_squares_recovers_known_coefficients():
    g = torch.Generator().manual_seed(0)
    Q = [torch.randn(32, 3, 4, dtype=F64, generator=g) for _ in range(4)]
    c_star = torch.tensor([0.3, -1.2, 2.5, 0.01], dtype=F64)
    target = sum(c * q for c, q in zip(c_star, Q, strict=True))
    G, rhs = iia.gram(Q, target)
    torch.testing.assert_close(iia.solve(G, rhs, [True] * 4, ridge=0.0), c_star)
    torch.testing.assert_close(iia.solve(G, rhs, [True] * 4), c_star, rtol=1e-6, atol=1e-8)
    # Missing quantities (no history yet) are excluded and get coefficient 0.
    G2, rhs2 = iia.gram([Q[0], None, Q[2], None], c_star[0] * Q[0] + c_star[2] * Q[2])
    torch.testing.assert_close(
        iia.solve(G2, rhs2, [True, False, True, False], ridge=0.0),
        torch.tensor([0.3, 0.0, 2.5, 0.0], dtype=F64),
    )
    # Sums over batches equal the sum over the whole batch (what DDP all-reduces).
    Ga, ra = iia.gram([q[:10] for q in Q], target[:10])
    Gb, rb = iia.gram([q[10:] for q in Q], target[10:])
    torch.testing.assert_close(Ga + Gb, G)
    torch.testing.assert_close(ra + rb, rhs)


def test_fine_grid_spacings(gmm):
    g = iia.fine_grid(10.0, 2.0, 4, "sigma")
    torch.testing.assert_close(g, torch.tensor([10.0, 8.0, 6.0, 4.0, 2.0], dtype=F64))
    g = iia.fine_grid(10.0, 0.1, 2, "logsnr")
    torch.testing.assert_close(g, torch.tensor([10.0, 1.0, 0.1], dtype=F64))
    g = iia.fine_grid(10.0, 2.0, 3, "time", gmm.vp)
    t = gmm.vp.t(g)
    torch.testing.assert_close(t[1:] - t[:-1], torch.full((3,), float(t[1] - t[0]), dtype=F64))
    assert iia.fine_grid(0.5, 0.0, 2, "time", gmm.vp).tolist() == [0.5, 0.25, 0.0]
    assert iia.resolve_spacing(iia.get_form("iia_edm"), "auto", gmm.vp) == "sigma"
    assert iia.resolve_spacing(iia.get_form("iia_ddim"), "auto", gmm.vp) == "time"
    assert iia.resolve_spacing(iia.get_form("iia_dpmpp_2m"), "auto", None) == "logsnr"
    with pytest.raises(SamplerError, match="spacing"):
        iia.resolve_spacing(iia.get_form("iia_ddim"), "cubic", None)


@pytest.mark.parametrize("warm_start", [True, False])
def test_dpmpp_fine_reference_of_the_last_step(gaussian, warm_start):
    # The step to sigma = 0 (the coarse step is the denoise D_i): M fine 2M sub-steps from
    # the same state must beat it against the exact flow and converge with M (a warm start
    # with the coarse previous D made the M = 2 reference worse than the coarse step).
    sig = build_sigmas(gaussian, get_sampler("dpmpp_2m"), 10)
    x = sl.sample(gaussian, "dpmpp_2m", sigmas=sig[:-1], shape=(32, 4), dtype=F64, steps=9).x
    s_prev, s_last = float(sig[-3]), float(sig[-2])
    x_prev = gaussian.ode_solution(x, s_last, s_prev)
    history = (gaussian(x_prev, torch.full((32,), s_prev, dtype=F64)), torch.log(sig[-3] / sig[-2]))
    exact = gaussian.ode_solution(x, s_last, 0.0)
    coarse = gaussian(x, torch.full((32,), s_last, dtype=F64))
    errs = [float((coarse - exact).norm())]
    for M in (2, 4, 8, 16):
        sub = iia.fine_grid(s_last, 0.0, M, "sigma")
        ref = iia.get_form("iia_dpmpp_2m").fine_reference(
            gaussian, x, sub, history, warm_start=warm_start
        )
        errs.append(float((ref - exact).norm()))
    assert max(errs[1:]) < 0.6 * errs[0] and errs[-1] < 0.05 * errs[0], errs


def test_sampler_refuses_other_grid_or_sampler(gmm):
    s10 = build_sigmas(gmm, get_sampler("iia_edm"), 10)
    c = iia.IIACoefficients.defaults("iia_edm", s10)
    with pytest.raises(SamplerError, match="different grid"):
        sl.sample(gmm, "iia_edm", steps=8, shape=(2, gmm.dim), coeffs=c)
    with pytest.raises(SamplerError, match="fitted for iia_edm, not biia_edm"):
        sl.sample(gmm, "biia_edm", steps=10, shape=(2, gmm.dim), coeffs=c)
    with pytest.raises(SamplerError, match="not an IIA sampler"):
        iia.IIACoefficients("ddim", s10, c.coeffs, c.mask)
    with pytest.raises(SamplerError, match="must be"):
        iia.IIACoefficients("iia_edm", s10, c.coeffs[:, :2], c.mask)


def _fitted_like(gmm, name="iia_edm", steps=6):
    s = build_sigmas(gmm, get_sampler(name), steps)
    c = iia.IIACoefficients.defaults(name, s)
    coeffs = c.coeffs + 0.01 * torch.arange(c.coeffs.numel(), dtype=F64).reshape(c.coeffs.shape)
    meta = {"fingerprint": fingerprint(gmm), "M": 3, "num_samples": 16}
    return iia.IIACoefficients(name, s, coeffs, c.mask, metadata=meta)


def test_file_round_trip_and_sampling_from_path(gmm, tmp_path):
    c = _fitted_like(gmm)
    path = save(c, tmp_path / "sub" / "c.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.safetensors"]  # no temp left
    d = load(path, denoiser=gmm, sigmas=c.sigmas)
    assert torch.equal(d.coeffs, c.coeffs) and torch.equal(d.mask, c.mask)
    assert torch.equal(d.sigmas, c.sigmas) and d.sampler == "iia_edm" and d.r == 1
    assert d.metadata["M"] == 3 and d.metadata["steps"] == 6 and "library_version" in d.metadata
    kw = {"steps": 6, "shape": (3, gmm.dim), "dtype": F64}
    a = sl.sample(gmm, "iia_edm", coeffs=c, **kw).x
    b = sl.sample(gmm, "iia_edm", coeffs=str(path), **kw).x
    assert torch.equal(a, b)
    assert not torch.allclose(a, sl.sample(gmm, "edm_heun", **kw).x)


def test_file_errors(gmm, tmp_path):
    c = _fitted_like(gmm)
    path = save(c, tmp_path / "c.safetensors")
    with pytest.raises(IIAFileError, match=r"does not exist.*samplerlab iia-fit"):
        load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(IIAFileError, match=r"corrupt.*samplerlab iia-fit"):
        load(bad)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(IIAFileError, match="corrupt"):
        load(trunc)
    other_grid = build_sigmas(gmm, get_sampler("iia_edm"), 7)
    with pytest.raises(IIAFileError, match=r"another grid.*--steps 6"):
        load(path, sigmas=other_grid)
    other = GaussianMixture.default(dim=gmm.dim, components=3, seed=2)
    with pytest.raises(IIAFileError, match="another model"):
        load(path, denoiser=other)
    with pytest.raises(SamplerError, match="does not exist"):
        sl.sample(gmm, "iia_edm", steps=6, shape=(2, gmm.dim), coeffs=tmp_path / "nope")


def test_fingerprint_of_wrapped_modules():
    from samplerlab.samplers.denoisers import CountingDenoiser, EDMDenoiser

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 4)
    den = EDMDenoiser(lambda x, s: net(x), preconditioned=False)  # module only in a closure
    den2 = EDMDenoiser(net, preconditioned=False)
    f, g = fingerprint(den2), fingerprint(den)
    assert fingerprint(CountingDenoiser(den2)) == f
    assert g == fingerprint(den2.net) or g == f
    with torch.no_grad():
        net.weight[0, 0] += 1e-3
    assert fingerprint(den2) != f
    assert fingerprint(den) != g  # the module held only in a closure is hashed too


def test_torch_only_layer_takes_loaded_coefficients(gmm, tmp_path):
    # samplers/ imports only torch: a path is loaded by samplerlab.sample, not below it.
    from samplerlab.samplers import sample as torch_only_sample

    path = save(_fitted_like(gmm), tmp_path / "c.safetensors")
    with pytest.raises(SamplerError, match=r"samplerlab\.iia\.load") as e:
        torch_only_sample(gmm, "iia_edm", steps=6, shape=(2, gmm.dim), coeffs=str(path))
    assert "\n" not in str(e.value)
    kw = {"steps": 6, "shape": (2, gmm.dim), "dtype": F64}
    x = torch_only_sample(gmm, "iia_edm", coeffs=load(path), **kw).x
    assert torch.equal(x, sl.sample(gmm, "iia_edm", coeffs=path, **kw).x)


def test_bench_option_takes_a_coefficient_file(gmm, tmp_path):
    # `samplerlab bench --option iia_edm.coeffs=FILE`: the file is loaded for each run.
    from samplerlab.bench import run_bench

    c = _fitted_like(gmm)
    path = save(c, tmp_path / "c.safetensors")
    kw = {"nfe_budgets": [11], "n_samples": 8, "seed_sets": 2, "progress": False}
    kw["ddpm_budgets"] = []
    by_file = run_bench(gmm, ["iia_edm"], sampler_options={"iia_edm": {"coeffs": str(path)}}, **kw)
    by_value = run_bench(gmm, ["iia_edm"], sampler_options={"iia_edm": {"coeffs": c}}, **kw)
    plain = run_bench(gmm, ["iia_edm"], **kw)
    assert "error" not in by_file[0] and by_file[0]["options"] == {"coeffs": str(path)}
    assert by_file[0]["rms"] == by_value[0]["rms"] != plain[0]["rms"]
