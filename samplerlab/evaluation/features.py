"""Feature extractors for FID, all taking data-space tensors (images in ``[-1, 1]``) and
returning float64 features ``[B, F]`` with a ``num_features`` attribute (torchmetrics'
``FrechetInceptionDistance(feature=module)`` contract):

- ``inception``: torch-fidelity's InceptionV3 (2048-d pool features) from a LOCAL weights file;
- ``classifier``: the penultimate layer of a small CNN trained on the dataset by samplerlab
  (the digits one ships in ``samplerlab/assets``; made by
  ``python -m samplerlab.assets.make_digits_classifier``);
- ``raw``: the flattened data (exact for low-dimensional data such as the Gaussian mixture).
"""

from __future__ import annotations

import hashlib
import math
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
)


class RawFeatures(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.num_features = math.prod(shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1).double()


class DigitsCNN(nn.Module):
    """A small CNN classifier of 8x8 grayscale digits; ``features``: its 64-d penultimate layer."""

    size = 8

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, 64),
            nn.SiLU(),
        )
        self.head = nn.Linear(64, num_classes)

    def features(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="area")
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class ClassifierFeatures(nn.Module):
    def __init__(self, net: DigitsCNN) -> None:
        super().__init__()
        self.net = net.eval()
        self.num_features = 64

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        w = next(self.net.parameters())
        return self.net.features(x.clamp(-1, 1).to(w.dtype)).double()


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """A plain state dict from ``path`` without running code from it: safetensors, or
    ``torch.load(weights_only=True)`` (tensors and containers only; a pickled payload is
    refused before it can run)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError("not a state dict of tensors")
    return sd


class InceptionFeatures(nn.Module):
    """torch-fidelity InceptionV3 pool features of images quantised to uint8 (as torchmetrics).

    The weights file is read as a plain state dict (:func:`load_state_dict_file`, never
    unpickled) and handed to torch-fidelity's architecture in place of its download.
    """

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        from unittest import mock

        import torch_fidelity.feature_extractor_inceptionv3 as fe
        from torchmetrics.image.fid import NoTrainInceptionV3

        state = load_state_dict_file(weights)
        # torch-fidelity unpickles a weights *path* (weights_only=False); given no path it
        # asks load_state_dict_from_url, which here returns the safely loaded dict.
        with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: state):
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
        self.num_features = 2048

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if img.shape[1] == 1:
            img = img.repeat(1, 3, 1, 1)
        return self.net(img).double()


def shipped_classifier(dataset: str) -> Path | None:
    p = Path(str(resources.files("samplerlab") / "assets" / f"{dataset}_classifier.pt"))
    return p if p.is_file() else None


def load_classifier(path: str | Path) -> DigitsCNN:
    p = Path(path)
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
        net = DigitsCNN(**blob["config"])
        net.load_state_dict(blob["state_dict"])
    except FileNotFoundError:
        raise ConfigError(f"eval.classifier_weights: file {p} does not exist") from None
    except Exception as e:
        raise ConfigError(f"eval.classifier_weights: {p} is not a classifier file ({e})") from None
    return net.eval()


def _file_tag(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()[:12]


def build_features(eval_cfg: Any, data_cfg: Any, shape: tuple[int, ...]) -> tuple[nn.Module, str]:
    """The feature extractor named by ``eval.feature`` and an id for the statistics cache."""
    kind = eval_cfg.feature
    if kind == "raw":
        return RawFeatures(shape), "raw"
    if len(shape) != 3:
        raise ConfigError(f"eval.feature: '{kind}' needs images; use eval.feature=raw for vectors")
    if kind == "inception":
        w = eval_cfg.inception_weights
        if w is None or not Path(w).is_file():
            where = "is not set" if w is None else f"= {w} does not exist"
            raise ConfigError(
                f"eval.inception_weights {where}: download {INCEPTION_URL} once and pass its path "
                "(nothing is downloaded at run time)"
            )
        try:
            net = InceptionFeatures(w)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(
                f"eval.inception_weights: {w} is not torch-fidelity InceptionV3 weights "
                f"({INCEPTION_FILE}): {msg}"
            ) from None
        return net, f"inception-{_file_tag(Path(w))}"
    path = eval_cfg.classifier_weights or shipped_classifier(data_cfg.name)
    if path is None:
        raise ConfigError(
            f"eval.classifier_weights: no classifier ships for data '{data_cfg.name}'; pass one "
            "(see samplerlab/assets/make_digits_classifier.py) or use eval.feature=raw|inception"
        )
    net = load_classifier(path)
    if net.body[0].in_channels != shape[0]:
        raise ConfigError(
            f"eval.classifier_weights: the classifier takes {net.body[0].in_channels}-channel "
            f"images, the data have {shape[0]}"
        )
    return ClassifierFeatures(net), f"classifier-{_file_tag(Path(path))}"
