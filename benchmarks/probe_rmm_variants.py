"""rmm_parallel settings on the holdout models: rounds, NFE and error to the exact ODE.

Used once to decide whether the previous ``rmm_parallel`` variant (grid points and
midpoints evaluated, exact to sequential ``rmm`` after 2P-1 rounds; commit 160de48) earns
a place beside the paper's algorithm. Run it with each code version on the path:

    git archive 160de48 | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base python benchmarks/probe_rmm_variants.py \\
        '[["old R=5 K=3", {"R": 5, "K": 3}], ["old R=5 K=5", {"R": 5, "K": 5}], \\
          ["old R=8 K=4", {"R": 8, "K": 4}]]' > old.json
    PYTHONPATH=$PWD python benchmarks/probe_rmm_variants.py '[["new default", {}]]' > new.json
"""

from __future__ import annotations

import json
import sys

import torch

import samplerlab as sl
from samplerlab.analytic import panel
from samplerlab.samplers import build_sigmas, get_sampler, get_sigmas
from samplerlab.samplers.denoisers import CountingDenoiser
from samplerlab.samplers.noise import PerSampleNoise


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    configs = json.loads(argv[0])
    out = []
    for name, m in panel("holdout").items():
        for N in (20, 100):
            sig = build_sigmas(m, get_sampler("rmm"), N)
            for s in range(4):
                n = 128
                g = torch.Generator().manual_seed(77 + s)
                scale = float((sig[0] ** 2 + m.prior_std**2).sqrt())
                x = torch.randn(n, m.dim, generator=g, dtype=torch.float64) * scale
                fine = get_sigmas("karras", 4 * N, sigma_min=m.sigma_min, sigma_max=float(sig[0]))
                ref = sl.samplers.sample_edm_heun(m, x, fine)
                for label, opts in configs:
                    c = CountingDenoiser(m)
                    noise = PerSampleNoise(range(s * 1000, s * 1000 + n))
                    y = get_sampler("rmm_parallel")(c, x, sig, noise=noise, **opts)
                    err = float(((y - ref).pow(2).mean() / ref.pow(2).mean()).sqrt())
                    out.append(
                        dict(
                            model=name,
                            N=N,
                            seed_set=s,
                            label=label,
                            rounds=c.rounds,
                            nfe=c.nfe(n),
                            err=err,
                        )
                    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
