"""The bit-identity guard (benchmarks/check_equivalence.py) against its saved baseline."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "check_equivalence.py"


def _script():
    # The script is a benchmark, not a library module: loaded from its file (registered in
    # sys.modules first, as its dataclasses need).
    name = "check_equivalence"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def test_quick_subset_is_bit_identical_to_the_baseline(capsys):
    rc = _script().main(["--compare", "--quick"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.strip().splitlines()[-1].endswith(" differ, 0 missing"), out


@pytest.mark.slow
def test_every_case_is_bit_identical_to_the_baseline(capsys):
    rc = _script().main(["--compare"])
    out = capsys.readouterr().out
    assert rc == 0, out
