"""Bad inputs and faults of the training / run / loading side, tried as a new user would.

Each case runs the ``samplerlab`` CLI in a subprocess (tiny ``test`` configs) and records the
exit status, whether a traceback was printed, and the last line of stderr. The table in
``docs/faults.md`` ("Training, runs and loading") comes from this script:

    PYTHONPATH=. python benchmarks/faults_train.py --out benchmarks/results/faults_train.md

``--root`` runs the cases against another checkout (e.g. the code before the fixes).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """A pickle whose loading creates ``marker`` (code execution from a user file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def cli(root: Path, work: Path, *args: str, timeout: int = 600) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "samplerlab.cli", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    last = err[-1] if err else ""
    return {
        "rc": p.returncode,
        "traceback": "Traceback (most recent call last)" in p.stderr,
        "last": last[:220],
        "stdout_tail": p.stdout.strip().splitlines()[-1:] or [""],
        "seconds": round(time.perf_counter() - t, 1),
    }


TEST = ["test", "eval.enabled=false"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT), help="checkout whose samplerlab is tried")
    ap.add_argument("--out", default=None, help="markdown table (and .json beside it)")
    ap.add_argument("--only", default=None, help="comma-separated case ids")
    args = ap.parse_args()
    root = Path(args.root).resolve()
    work = Path(tempfile.mkdtemp(prefix="faults_train_"))
    run = lambda *a, **k: cli(root, work, *a, **k)

    # A trained tiny checkpoint for the loading cases.
    base = run("train", *TEST, "out_dir=base", "trainer.max_epochs=2")
    ckpt = work / "base" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file(), base

    def images(name: str, n: int, corrupt: int = 0, mode: str = "L") -> Path:
        from PIL import Image

        d = work / name
        d.mkdir(exist_ok=True)
        for i in range(n):
            Image.new(
                mode, (8, 8), color=(i * 13) % 255 if mode == "L" else (i, 2 * i, 3 * i)
            ).save(d / f"{i}.png")
        for i in range(corrupt):
            (d / f"bad{i}.png").write_bytes(b"\x89PNG this is not an image")
        return d

    def malicious(name: str, zipped: bool) -> tuple[Path, Path]:
        import torch

        marker = work / f"PWNED_{name}"
        f = work / f"{name}.ckpt"
        if zipped:
            torch.save({"state_dict": Payload(marker)}, f)
        else:
            f.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
        return f, marker

    def unet(*extra: str) -> list[str]:
        return [
            "test",
            "eval.enabled=false",
            "model.backbone=unet",
            "model.unet.block_out_channels=[8,16]",
            "model.unet.norm_num_groups=4",
            "model.unet.attention_head_dim=4",
            "trainer.max_steps=2",
            *extra,
        ]

    cases: list[tuple[str, str, Callable[[], dict]]] = []

    def case(cid: str, what: str):
        def deco(fn: Callable[[], dict]) -> Callable[[], dict]:
            cases.append((cid, what, fn))
            return fn

        return deco

    @case("yaml", "malformed override YAML `eval.nfe=[10,20`")
    def _():
        return run("train", *TEST, "eval.nfe=[10,20")

    @case("seed-float", "`sample --seed 1e20`")
    def _():
        return run("sample", "--ckpt", str(ckpt), "--sampler", "ddim", "--steps", "2",
                   "--seed", "1e20", "--out", "s.png")  # fmt: skip

    @case("seed-big", "`sample --seed 100000000000000000000`")
    def _():
        return run("sample", "--ckpt", str(ckpt), "--sampler", "ddim", "--steps", "2",
                   "--seed", "100000000000000000000", "--out", "s.png")  # fmt: skip

    @case("seed-train", "`train seed=1e20`")
    def _():
        return run("train", *TEST, "seed=1e20")

    @case("device", "`sample --device cuda` without CUDA")
    def _():
        return run("sample", "--ckpt", str(ckpt), "--sampler", "ddim", "--steps", "2",
                   "--device", "cuda", "--out", "s.png")  # fmt: skip

    @case("device-bad", "`sample --device gpu0`")
    def _():
        return run("sample", "--ckpt", str(ckpt), "--sampler", "ddim", "--steps", "2",
                   "--device", "gpu0", "--out", "s.png")  # fmt: skip

    @case("accel", "`trainer.accelerator=tpuu`")
    def _():
        return run("train", *TEST, "trainer.accelerator=tpuu", "out_dir=r_accel")

    @case("accel-gpu", "`trainer.accelerator=gpu` without CUDA")
    def _():
        return run("train", *TEST, "trainer.accelerator=gpu", "out_dir=r_gpu")

    @case("precision", "`trainer.precision=fp13`")
    def _():
        return run("train", *TEST, "trainer.precision=fp13", "out_dir=r_prec")

    @case("strategy", "`trainer.strategy=dpp`")
    def _():
        return run("train", *TEST, "trainer.strategy=dpp", "out_dir=r_strat")

    @case("max_time", "`trainer.max_time=4min`")
    def _():
        return run("train", *TEST, "trainer.max_time=4min", "out_dir=r_time")

    @case("channels-digits", "`data.channels=3` on digits (1 channel)")
    def _():
        return run("train", *unet("data.name=digits", "data.channels=3", "out_dir=r_ch"))

    @case("channels-folder", "`data.channels=2` on an image folder")
    def _():
        d = images("imgs_ch", 8)
        return run("train", *unet("data.name=image_folder", f"data.root={d}",
                                  "data.channels=2", "out_dir=r_ch2"))  # fmt: skip

    @case("corrupt", "one corrupt image in an image folder")
    def _():
        d = images("imgs_bad", 8, corrupt=1)
        return run("train", *unet("data.name=image_folder", f"data.root={d}", "out_dir=r_bad"))

    @case("one-image", "an image folder with one image")
    def _():
        d = images("imgs_one", 1)
        return run("train", *unet("data.name=image_folder", f"data.root={d}", "out_dir=r_one"))

    @case("resume-dim", "resume with another data dimension (`data.gmm.dim=4`)")
    def _():
        return run("train", *TEST, f"ckpt_path={ckpt}", "data.gmm.dim=4", "trainer.max_epochs=3",
                   "out_dir=r_dim")  # fmt: skip

    @case("resume-sigma", "resume with another `model.sigma_data` (0.7)")
    def _():
        r = run("train", *TEST, f"ckpt_path={ckpt}", "model.sigma_data=0.7",
                "trainer.max_epochs=3", "out_dir=r_sigma")  # fmt: skip
        r["note"] = "trained" if (work / "r_sigma" / "checkpoints" / "last.ckpt").exists() else ""
        return r

    @case("rerun", "rerun into the same name")
    def _():
        run("train", *TEST, "out_dir=r_rerun")
        r = run("train", *TEST, "out_dir=r_rerun")
        r["note"] = "files: " + ", ".join(
            sorted(p.name for p in (work / "r_rerun" / "checkpoints").glob("*.ckpt"))
        )
        return r

    @case("concurrent", "two concurrent runs into one folder")
    def _():
        env = {
            **os.environ,
            "PYTHONPATH": str(root),
            "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "offline",
        }
        first = subprocess.Popen(
            [sys.executable, "-m", "samplerlab.cli", "train", *TEST, "out_dir=r_conc",
             "trainer.max_epochs=200"],
            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(25)
        r = run("train", *TEST, "out_dir=r_conc", "trainer.max_epochs=1")
        first.kill()
        first.wait()
        return r

    @case("resume-capped", "resume a run that reached its time cap")
    def _():
        import torch

        cap = [
            "trainer.max_epochs=1000",
            "data.gmm.num_samples=4096",
            "trainer.max_time=00:00:00:05",
        ]
        run("train", *TEST, "out_dir=r_cap", *cap)
        c = work / "r_cap" / "checkpoints" / "last.ckpt"
        first = torch.load(c, map_location="cpu", weights_only=True)["global_step"]
        r = run("train", *TEST, "out_dir=r_cap", f"ckpt_path={c}", *cap)
        second = torch.load(c, map_location="cpu", weights_only=True)["global_step"]
        r["note"] = f"steps after the first run: {first}, after the resumed run: {second}"
        return r

    @case("nan", "`optim.lr=1e8` (NaN loss)")
    def _():
        r = run("train", *TEST, "out_dir=r_nan", "optim.lr=1e8", "optim.grad_clip=0",
                "trainer.max_epochs=3")  # fmt: skip
        c = work / "r_nan" / "checkpoints" / "last.ckpt"
        if c.is_file():
            import torch

            sd = torch.load(c, map_location="cpu", weights_only=True)["state_dict"]
            finite = all(bool(v.isfinite().all()) for v in sd.values() if v.is_floating_point())
            r["note"] = f"last.ckpt finite: {finite}"
        else:
            r["note"] = "no last.ckpt"
        return r

    for entry in ("sample", "evaluate", "iia-fit", "train"):
        for zipped in (False, True):
            cid = f"pickle-{entry}-{'zip' if zipped else 'raw'}"

            def _(entry=entry, zipped=zipped, cid=cid):
                f, marker = malicious(cid, zipped)
                argv = {
                    "sample": ["sample", "--ckpt", str(f), "--sampler", "ddim", "--steps", "2"],
                    "evaluate": ["evaluate", "--ckpt", str(f)],
                    "iia-fit": ["iia-fit", "--ckpt", str(f), "--steps", "3"],
                    "train": ["train", *TEST, f"ckpt_path={f}", f"out_dir=r_{cid}"],
                }[entry]
                r = run(*argv)
                r["note"] = f"code ran: {marker.exists()}"
                return r

            cases.append(
                (
                    cid,
                    f"malicious pickle ({'torch zip' if zipped else 'raw pickle'}) to `{entry}`",
                    _,
                )
            )

    @case("epochs0", "`trainer.max_epochs=0`")
    def _():
        return run("train", *TEST, "trainer.max_epochs=0", "out_dir=r_e0")

    @case("lr-neg", "`optim.lr=-1`")
    def _():
        return run("train", *TEST, "optim.lr=-1", "out_dir=r_lrneg")

    @case("valfrac", "`data.val_fraction=1.5`")
    def _():
        return run("train", *TEST, "data.val_fraction=1.5", "out_dir=r_vf")

    @case("devices0", "`trainer.devices=0`")
    def _():
        return run("train", *TEST, "trainer.devices=0", "out_dir=r_dev0")

    @case("groups", "`model.unet.norm_num_groups=5` (does not divide the channels)")
    def _():
        return run("train", *unet("data.name=digits", "model.unet.norm_num_groups=5",
                                  "out_dir=r_groups"))  # fmt: skip

    @case("blocks", "`model.unet.block_out_channels=[16]` (two down blocks)")
    def _():
        return run("train", *unet("data.name=digits", "model.unet.block_out_channels=[16]",
                                  "out_dir=r_blocks"))  # fmt: skip

    @case("image-size", "`data.image_size=7` with a 2-level UNet")
    def _():
        return run("train", *unet("data.name=digits", "data.image_size=7", "out_dir=r_size"))

    @case("ckpt-dir", "`ckpt_path=` a folder")
    def _():
        return run("train", *TEST, f"ckpt_path={work / 'base'}", "out_dir=r_ckdir")

    @case("out-file", "`out_dir=` an existing file")
    def _():
        (work / "afile").write_text("x")
        return run("train", *TEST, "out_dir=afile")

    @case("out-ro", "`out_dir=` inside a read-only folder")
    def _():
        ro = work / "ro"
        ro.mkdir(exist_ok=True)
        ro.chmod(0o555)
        return run("train", *TEST, f"out_dir={ro / 'run'}")

    @case("workers", "`data.num_workers=-1`")
    def _():
        return run("train", *TEST, "data.num_workers=-1", "out_dir=r_w")

    @case("gmm-dim0", "`data.gmm.dim=0`")
    def _():
        return run("train", *TEST, "data.gmm.dim=0", "out_dir=r_dim0")

    @case("sample-n0", "`sample --n 0`")
    def _():
        return run("sample", "--ckpt", str(ckpt), "--sampler", "ddim", "--steps", "2", "--n", "0")

    @case("sample-steps0", "`sample --steps 0`")
    def _():
        return run("sample", "--ckpt", str(ckpt), "--sampler", "ddim", "--steps", "0")

    @case("sample-outdir", "`sample --out` an existing folder")
    def _():
        (work / "adir").mkdir(exist_ok=True)
        return run("sample", "--ckpt", str(ckpt), "--sampler", "ddim", "--steps", "2",
                   "--out", "adir")  # fmt: skip

    @case("sample-missing", "`sample --ckpt` a missing file")
    def _():
        return run("sample", "--ckpt", "nope.ckpt", "--sampler", "ddim", "--steps", "2")

    @case("iia-missing", "`iia-fit --ckpt` a missing file")
    def _():
        return run("iia-fit", "--ckpt", "nope.ckpt", "--steps", "3")

    only = set(args.only.split(",")) if args.only else None
    results = []
    for cid, what, fn in cases:
        if only and cid not in only:
            continue
        try:
            r = fn()
        except Exception as e:  # the probe itself failed
            r = {"rc": None, "traceback": None, "last": f"probe failed: {e!r}"[:200]}
        r.update(id=cid, what=what)
        results.append(r)
        print(json.dumps(r), flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
        lines = [
            "| id | input | rc | traceback | last line of stderr | note |",
            "|---|---|---:|---|---|---|",
        ]
        for r in results:
            last = str(r.get("last", "")).replace("|", "\\|")
            lines.append(
                f"| {r['id']} | {r['what']} | {r['rc']} | {'yes' if r['traceback'] else 'no'} "
                f"| {last} | {r.get('note', '')} |"
            )
        out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
