"""The Inception feature path on a locally made weights file (never a download).

The real torch-fidelity weights are ~100 MB and cannot be fetched here, so the test saves an
InceptionV3 of the same architecture with random weights and goes through the exact loading
code a user's `eval.inception_weights` file goes through.
"""

import pytest
import torch
from omegaconf import OmegaConf
from test_train import TINY_UNET

from samplerlab.errors import ConfigError
from samplerlab.evaluation.features import build_features
from samplerlab.trainer.config import load_config
from samplerlab.trainer.run import evaluate, train


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    mp = pytest.MonkeyPatch()
    # Build the architecture without its pretrained weights: no URL fetch, no state-dict load.
    mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
    mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    torch.manual_seed(0)
    net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    mp.undo()
    # He init keeps activations O(1) through the 94 conv layers (the stock init shrinks them
    # to ~1e-8, which would make every FID ~0 and the test unable to fail).
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


def test_inception_features_from_local_file(inception_file):
    ev = OmegaConf.create({"feature": "inception", "inception_weights": str(inception_file)})
    data = OmegaConf.create({"name": "digits"})
    feats, tag = build_features(ev, data, (1, 8, 8))
    assert tag.startswith("inception-") and feats.num_features == 2048
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    f = feats(x)
    assert f.shape == (3, 2048) and f.dtype == torch.float64 and torch.isfinite(f).all()
    assert (f[0] - f[1]).abs().mean() > 1e-3 * f.abs().mean()  # images are told apart
    torch.testing.assert_close(feats(x), f)  # eval mode, no dropout: deterministic
    # Grey images are fed as three equal channels: the same as an RGB image of equal channels.
    torch.testing.assert_close(feats(x.repeat(1, 3, 1, 1)), f)
    assert not feats.train().training  # stays frozen whatever Lightning asks


def test_inception_wrong_file_is_one_line(tmp_path):
    bad = tmp_path / "not-inception.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    ev = OmegaConf.create({"feature": "inception", "inception_weights": str(bad)})
    with pytest.raises(ConfigError) as e:
        build_features(ev, OmegaConf.create({"name": "digits"}), (1, 8, 8))
    msg = str(e.value)
    assert "eval.inception_weights" in msg and str(bad) in msg and "\n" not in msg


def test_evaluate_with_inception_fid(tmp_path, inception_file):
    """A trained RGB image-folder checkpoint evaluated with FID on Inception features."""
    from PIL import Image

    root = tmp_path / "images"
    gen = torch.Generator().manual_seed(0)
    for i in range(16):
        (root / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        px = torch.randint(0, 256, (8, 8, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(px).save(root / f"class{i % 2}" / f"{i}.png")
    data = ["data.name=image_folder", f"data.root={root}", "data.channels=3", "data.batch_size=8"]
    cfg = load_config(
        "test",
        overrides=[
            f"out_dir={tmp_path / 'run'}",
            *TINY_UNET,
            *data,
            "eval.enabled=false",
            "trainer.max_steps=1",
        ],
    )
    train(cfg)
    out = evaluate(
        str(tmp_path / "run" / "checkpoints" / "last.ckpt"),
        [],
        [
            f"out_dir={tmp_path / 'eval'}",
            "eval.feature=inception",
            f"eval.inception_weights={inception_file}",
            "eval.samplers.ddim.enabled=false",
            f"eval.cache_dir={tmp_path / 'cache'}",
        ],
    )
    (report,) = out["reports"]
    (row,) = report["results"]
    assert row["label"] == "euler" and row["nfe"] == 2
    # One training step: the samples are noise, far from the data and from the data floor.
    assert row["fid"] > 0 and row["fid"] > 2 * report["fid_floor"] > 0
    assert report["feature"].startswith("inception-")
    assert list((tmp_path / "cache").glob("real-*inception*"))  # real statistics cached


class _Payload:
    """Unpickling this object runs ``Path(marker).touch()`` (a stand-in for any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_malicious_inception_weights_never_run(tmp_path, suffix):
    """A weights file holding a pickled payload is refused before the payload runs."""
    marker = tmp_path / "pwned"
    bad = tmp_path / f"evil{suffix}"
    torch.save({"Conv2d_1a_3x3.conv.weight": _Payload(marker)}, bad)
    ev = OmegaConf.create({"feature": "inception", "inception_weights": str(bad)})
    with pytest.raises(ConfigError) as e:
        build_features(ev, OmegaConf.create({"name": "digits"}), (1, 8, 8))
    msg = str(e.value)
    assert not marker.exists()  # the payload never ran
    assert str(bad) in msg and "eval.inception_weights" in msg and "\n" not in msg


def test_inception_weights_as_safetensors(tmp_path, inception_file):
    """The same weights as a safetensors file give the same features."""
    from safetensors.torch import save_file

    sd = torch.load(inception_file, weights_only=True)
    st = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    data = OmegaConf.create({"name": "digits"})
    a, _ = build_features(
        OmegaConf.create({"feature": "inception", "inception_weights": str(inception_file)}),
        data,
        (1, 8, 8),
    )
    b, _ = build_features(
        OmegaConf.create({"feature": "inception", "inception_weights": str(st)}), data, (1, 8, 8)
    )
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(a(x), b(x))
