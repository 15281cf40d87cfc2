"""``samplerlab samplers``: the registry, one line each."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the registry as JSON")


def run(args: argparse.Namespace) -> int:
    from ..samplers import SAMPLERS

    rows = []
    for name, spec in SAMPLERS.items():
        kind = "deterministic" if spec.deterministic else "stochastic"
        nfe = [spec.nfe(n) for n in (10, 20)]
        rows.append(
            {
                "name": name,
                "kind": kind,
                "nfe_at_10_20_steps": nfe,
                "nfe_exact": spec.nfe_exact,
                "needs_coeffs": spec.needs_coeffs,
                "description": spec.description,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        nfe = "/".join(f"{v:g}" for v in r["nfe_at_10_20_steps"])
        approx = "" if r["nfe_exact"] else "~"
        coeffs = " [coeffs]" if r["needs_coeffs"] else ""
        print(
            f"{r['name']:<{width}}  {r['kind']:<13}  NFE@10/20 steps {approx}{nfe:<7}"
            f"  {r['description']}{coeffs}"
        )
    return 0
