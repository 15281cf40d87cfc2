"""``samplerlab samplers``: the registry, one line each, then the aliases users search for."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the registry as JSON")
    p.add_argument(
        "--no-aliases", action="store_true", help="list the registry only, without the aliases"
    )


def _alias_rows() -> list[dict]:
    from ..samplers.registry import ALIASES

    rows = []
    for name, alias in ALIASES.items():
        rows.append(
            {
                "alias": name,
                "source": alias.source,
                "sampler": alias.sampler,
                "options": dict(alias.options),
                "schedule": alias.schedule,
                "schedule_options": dict(alias.schedule_options),
                "note": alias.note,
            }
        )
    return rows


def _describe(r: dict) -> str:
    parts = [r["sampler"]]
    parts += [f"{k}={v}" for k, v in r["options"].items()]
    grid = r["schedule"] or "default grid"
    grid_opts = ", ".join(f"{k}={v}" for k, v in r["schedule_options"].items())
    parts.append(f"schedule={grid}" + (f" ({grid_opts})" if grid_opts else ""))
    return " ".join(parts) + (f"  [{r['note']}]" if r["note"] else "")


def run(args: argparse.Namespace) -> int:
    from ..samplers import SAMPLERS

    rows = []
    for name, spec in SAMPLERS.items():
        kind = "deterministic" if spec.deterministic() else "stochastic"
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
    aliases = [] if args.no_aliases else _alias_rows()
    if args.json:
        print(
            json.dumps(
                rows if args.no_aliases else {"samplers": rows, "aliases": aliases}, indent=2
            )
        )
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
    if aliases:
        print("\naliases (samplerlab.sample(den, ALIAS, ...), --sampler ALIAS; case-insensitive):")
        width = max(len(r["alias"]) for r in aliases) + 2
        for r in aliases:
            label = f'"{r["alias"]}"'
            print(f"{label:<{width}}  {r['source']:<9}  -> {_describe(r)}")
    return 0
