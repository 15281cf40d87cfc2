"""``samplerlab sample --pipeline`` and the latent evaluation (samplers x budgets x guidance
-> decoded images -> FID) end to end on tiny SD-like and DiT-like pipelines."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_latent import PROMPTS, make_dit, make_sd

from samplerlab.cli import main
from samplerlab.errors import ConfigError
from samplerlab.evaluation.features import RawFeatures
from samplerlab.evaluation.fid import fid_from_stats, stats_of
from samplerlab.evaluation.latent import evaluate_latent, load_reference
from samplerlab.latent import generate, load


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return make_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("\n".join(PROMPTS[:3]) + "\n")
    return p


def test_cli_sample_writes_the_decoded_images_of_generate(sd_folder, prompts_file, tmp_path):
    out = tmp_path / "img.pt"
    args = ["sample", "--pipeline", str(sd_folder), "--prompts", str(prompts_file),
            "--sampler", "dpmpp_2m", "--steps", "3", "--guidance", "4", "--n", "4",
            "--batch-size", "3", "--seed", "2"]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    got = torch.load(out, weights_only=True)
    pipe = load(sd_folder)
    want = generate(pipe, "dpmpp_2m", steps=3, seeds=range(2, 6), values=PROMPTS[:3],
                    guidance=4.0, batch_size=3)  # fmt: skip
    assert got.shape == (4, 3, 8, 8)
    torch.testing.assert_close(got, want.images, rtol=0, atol=0)
    png = tmp_path / "grid.png"
    assert main([*args, "--out", str(png)]) == 0 and png.stat().st_size > 0


def test_cli_sample_dit_class_labels_and_bad_input(tmp_path, sd_folder, capsys):
    dit = make_dit(tmp_path / "dit")
    out = tmp_path / "dit.pt"
    rc = main(["sample", "--pipeline", str(dit), "--class-labels", "0,3", "--sampler", "ddim",
               "--steps", "2", "--guidance", "2", "--out", str(out)])  # fmt: skip
    full = torch.load(out, weights_only=True)
    assert rc == 0 and full.shape == (2, 3, 8, 8)
    rc = main(["sample", "--pipeline", str(dit), "--class-labels", "0,3", "--sampler", "ddim",
               "--steps", "2", "--guidance", "2", "--guidance-interval", "0,5",
               "--out", str(out)])  # fmt: skip
    part = torch.load(out, weights_only=True)
    want = generate(load(dit), "ddim", steps=2, seeds=[0, 1], values=[0, 3], guidance=2.0,
                    guidance_interval=(0.0, 5.0))  # fmt: skip
    torch.testing.assert_close(part, want.images, rtol=0, atol=0)
    assert rc == 0 and float((part - full).abs().max()) > 1e-4  # the first step is unguided
    rc = main(["sample", "--pipeline", str(dit), "--class-labels", "0,9", "--sampler", "ddim",
               "--steps", "2", "--out", str(out)])  # fmt: skip
    assert rc == 2 and "class labels [9] are out of range" in capsys.readouterr().err
    rc = main(["sample", "--pipeline", str(sd_folder), "--prompts", str(tmp_path / "none.txt"),
               "--sampler", "ddim", "--steps", "2", "--out", str(out)])  # fmt: skip
    assert rc == 2 and "none.txt does not exist" in capsys.readouterr().err


def test_latent_evaluation_rows_fid_and_resume(sd_folder, tmp_path):
    """Rows of samplers x budgets x guidance; each FID is that of the decoded images of
    generate() against the reference; a rerun reuses the finished rows."""
    pipe = load(sd_folder)
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    torch.save(ref, tmp_path / "ref.pt")
    kw = {"samplers": ["ddim", "dpmpp_2m"], "nfe": [2, 3], "guidance": [1.0, 3.0],
          "num_samples": 5, "out_dir": tmp_path / "ev", "plot": False}  # fmt: skip
    rows = evaluate_latent(pipe, PROMPTS, tmp_path / "ref.pt", **kw)
    assert [(r["sampler"], r["budget"], r["guidance"]) for r in rows] == [
        (s, b, w) for s in ("ddim", "dpmpp_2m") for b in (2, 3) for w in (1.0, 3.0)
    ]
    assert all(r["status"] == "ok" and r["fid"] > 0 for r in rows)
    assert [r["nfe"] for r in rows[:4]] == [2.0, 4.0, 3.0, 6.0]  # guided rows: both rows
    assert not any(r["over_budget"] for r in rows)
    feats = RawFeatures((3, 8, 8))
    r = rows[3]  # ddim, 3 steps, w = 3
    imgs = generate(pipe, "ddim", steps=3, seeds=range(5), values=PROMPTS, guidance=3.0).images
    want = fid_from_stats(stats_of(feats(ref)), stats_of(feats(imgs)))
    assert r["fid"] == pytest.approx(want, rel=1e-12)
    lines = (tmp_path / "ev" / "rows.jsonl").read_text().splitlines()
    assert len(lines) == 8 and json.loads(lines[3])["fid"] == r["fid"]
    assert "ddim w=3" in (tmp_path / "ev" / "report.md").read_text()
    assert (tmp_path / "ev" / "grids" / "ddim_w3_nfe3.png").is_file()
    again = evaluate_latent(pipe, PROMPTS, ref, **kw)
    assert all(a.get("resumed") for a in again) and [a["fid"] for a in again] == [
        r["fid"] for r in rows
    ]
    assert len((tmp_path / "ev" / "rows.jsonl").read_text().splitlines()) == 8


def test_latent_evaluation_error_rows_and_reference_checks(sd_folder, tmp_path):
    pipe = load(sd_folder)
    ref = torch.zeros(4, 3, 8, 8)
    with pytest.raises(ConfigError, match=r"must be >= 2 images of shape \(3, 8, 8\)"):
        load_reference(torch.zeros(4, 3, 4, 4), (3, 8, 8))
    with pytest.raises(ConfigError, match="does not exist"):
        load_reference(tmp_path / "nope.pt", (3, 8, 8))
    # iia_ddim with coefficients fitted for another grid: an error row, the others go on.
    from samplerlab.samplers.iia import IIACoefficients

    bad = IIACoefficients.defaults("iia_ddim", torch.linspace(80, 0, 6))
    rows = evaluate_latent(pipe, PROMPTS, ref, samplers=["iia_ddim", "ddim"], nfe=[2],
                           num_samples=2, coeffs={"iia_ddim": bad})  # fmt: skip
    assert [r["status"] for r in rows] == ["error", "ok"]
    assert "different grid" in rows[0]["error"]


def test_cli_evaluate_latent_dit_from_an_image_folder(tmp_path, capsys):
    from PIL import Image

    dit = make_dit(tmp_path / "dit")
    refdir = tmp_path / "ref"
    refdir.mkdir()
    g = torch.Generator().manual_seed(1)
    for k in range(4):
        a = (torch.rand(8, 8, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(a).save(refdir / f"{k}.png")
    ref = load_reference(refdir, (3, 8, 8))
    assert ref.shape == (4, 3, 8, 8) and float(ref.min()) >= -1 and float(ref.max()) <= 1
    out = tmp_path / "ev"
    rc = main(["evaluate-latent", str(dit), "--class-labels", "0,1,2,3", "--reference",
               str(refdir), "--samplers", "ddim,pmm", "--nfe", "3", "--guidance", "1,2",
               "--out-dir", str(out)])  # fmt: skip
    assert rc == 0
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert [(r["label"], r["status"]) for r in rows] == [
        ("ddim w=1", "ok"), ("ddim w=2", "ok"), ("pmm w=1", "ok"), ("pmm w=2", "ok")
    ]  # fmt: skip
    assert all(r["fid"] is not None for r in rows)
    assert "4 rows: 4 ok" in capsys.readouterr().out
    assert (out / "report.md").is_file() and (out / "fid_vs_nfe.png").is_file()


def test_readme_latent_block_runs_as_written(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### Latent and text-conditional models") :]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "path" / "to").mkdir(parents=True)
    make_sd(tmp_path / "path" / "to" / "sd-folder")
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)
    assert ns["images"].shape == (2, 3, 8, 8) and ns["got"].images.shape == (8, 3, 8, 8)
    assert ns["res"].nfe == 20.0  # guided: two rows per evaluation


def test_latent_evaluation_fits_iia_per_row_on_noise_condition_pairs(sd_folder):
    from samplerlab.iia import fit_coefficients

    pipe = load(sd_folder)
    ref = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    (row,) = evaluate_latent(pipe, PROMPTS[:2], ref, samplers=["iia_ddim"], nfe=[3],
                             guidance=[3.0], num_samples=3, iia_fit_samples=2)  # fmt: skip
    assert row["status"] == "ok" and row["coeffs"] == "fit"
    c = fit_coefficients(pipe.denoiser, "iia_ddim", steps=3, num_samples=2,
                         cond=pipe.encode_prompts(PROMPTS[:2]), guidance=3.0,
                         uncond=pipe.uncond())  # fmt: skip
    imgs = generate(pipe, "iia_ddim", steps=3, seeds=range(3), values=PROMPTS[:2],
                    guidance=3.0, coeffs=c).images  # fmt: skip
    feats = RawFeatures((3, 8, 8))
    want = fid_from_stats(stats_of(feats(ref)), stats_of(feats(imgs)))
    assert row["fid"] == pytest.approx(want, rel=1e-12)
    (plain,) = evaluate_latent(pipe, PROMPTS[:2], ref, samplers=["iia_ddim"], nfe=[3],
                               guidance=[3.0], num_samples=3)  # fmt: skip
    assert plain["coeffs"] == "default" and plain["fid"] != row["fid"]
