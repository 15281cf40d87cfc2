"""``samplerlab.samplers`` is pure torch: it imports without lightning, wandb, omegaconf or
diffusers (they are blocked in a subprocess), and no file in it names them in an import."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS_DIR = ROOT / "samplerlab" / "samplers"
FORBIDDEN = ("lightning", "pytorch_lightning", "wandb", "omegaconf", "diffusers", "hydra")

SCRIPT = f"""
import sys
for name in {FORBIDDEN!r}:
    sys.modules[name] = None  # any import of it raises ImportError
import samplerlab.samplers as s
import samplerlab
import samplerlab.analytic
import torch
g = samplerlab.analytic.Gaussian(torch.zeros(2), torch.ones(2))
res = samplerlab.sample(g, "euler", steps=2, shape=(1, 2))
assert res.x.shape == (1, 2)
print("ok", len(s.SAMPLERS))
"""


def test_imports_without_heavy_dependencies():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")


def test_blocking_really_blocks():
    """The subprocess trick works: a blocked module cannot be imported."""
    code = (
        "import sys; sys.modules['wandb'] = None\n"
        "try:\n import wandb\nexcept ImportError:\n print('blocked')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "blocked"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value).split(".")[0])
    return names


FILES = sorted(SAMPLERS_DIR.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(SAMPLERS_DIR)) for p in FILES])
def test_no_forbidden_import_in_samplers(path):
    bad = _imported_modules(path) & set(FORBIDDEN)
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
    allowed = {"torch", "numpy", "scipy", "math", "__future__"}
    third_party = {
        m for m in _imported_modules(path) if m not in sys.stdlib_module_names and m != "samplerlab"
    }
    assert third_party <= allowed, f"{path.relative_to(ROOT)} imports {sorted(third_party)}"
