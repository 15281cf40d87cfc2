"""Train the digits classifier shipped as ``samplerlab/assets/digits_classifier.pt``.

    python -m samplerlab.assets.make_digits_classifier [--out PATH] [--epochs 60] [--seed 0]

A small CNN on scikit-learn's bundled 8x8 digits (in [-1, 1]), trained on 80% of the set
with light augmentation (one-pixel shifts) and tested on the rest. Its 64-d penultimate
layer is the ``classifier`` feature of FID on digits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from samplerlab.evaluation.features import DigitsCNN
from samplerlab.fileio import atomic_write
from samplerlab.trainer.data import digits_tensor


def train(epochs: int = 60, seed: int = 0) -> tuple[DigitsCNN, float]:
    torch.manual_seed(seed)
    x, y = digits_tensor(8)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = len(x) // 5
    te, tr = perm[:n_test], perm[n_test:]
    net = DigitsCNN()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        net.train()
        for idx in tr[torch.randperm(len(tr))].split(128):
            xb = x[idx]
            # Augmentation: random shifts by up to one pixel (padding with background -1).
            dx, dy = torch.randint(-1, 2, (2,)).tolist()
            xb = torch.nn.functional.pad(xb, (1, 1, 1, 1), value=-1.0)[
                ..., 1 + dy : 9 + dy, 1 + dx : 9 + dx
            ]
            loss = torch.nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(x[te]).argmax(1) == y[te]).float().mean())
    return net, acc


def main() -> None:
    here = Path(__file__).parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(here / "digits_classifier.pt"))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    net, acc = train(args.epochs, args.seed)
    blob = {
        "config": {"channels": 1, "num_classes": 10, "width": 32},
        "state_dict": {k: v.clone() for k, v in net.state_dict().items()},
        "test_accuracy": acc,
    }
    out = Path(args.out)
    atomic_write(out, lambda tmp: torch.save(blob, tmp))
    print(f"test accuracy {acc:.4f}; wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
