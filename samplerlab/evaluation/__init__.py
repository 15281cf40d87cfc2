"""Evaluation of samplers on a model: every configured sampler x NFE budget -> FID, NFE,
rounds and seconds, as rows of a report. Pure torch and OmegaConf (no Lightning trainer);
the Lightning callback is :mod:`samplerlab.callbacks.sampler_eval`.

Parts, in the order a run uses them:

- :mod:`.plan`: the job planner (:class:`~.plan.Job`, the steps for an NFE budget), shared
  with ``samplerlab bench``;
- :mod:`.checks`: every job dry-runs on an analytic stand-in before any work;
- :mod:`.features`: FID feature extractors (Inception, a dataset classifier, raw data);
- :mod:`.real`: the real set's identity, statistics and their cache;
- :mod:`.fits`: IIA coefficients and calibrated grids a job needs;
- :mod:`.job`: one job -> its row (samples, checks, FID) and sample grid;
- :mod:`.fid`: the Fréchet distance (Heusel et al. 2017) and its bootstrap spread;
- :mod:`.dist`: the collectives (one process or a Lightning strategy);
- :mod:`.rows`, :mod:`.report`: finished rows on disk and the report files;
- :mod:`.evaluator`: :class:`~.evaluator.Evaluator`, which runs them in turn.
"""
