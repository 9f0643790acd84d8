"""Simulator validation: does ``greenserve simulate`` predict what a real sweep measures?

``make bench-sim`` (``python -m studies.simcheck``), for each model:

1. profiles it offline (:func:`studies.profile.run.profile_model`: latency and J per batch size, and
   the decode cost per image), as ``greenserve profile`` does;
2. for each trace (the study's 16 req/s ± 20 %, and a bursty on/off stream of the same mean
   rate), serves each configuration for real and replays the trace with Locust
   (:func:`studies.sweep.run.run_sweep`, so the runs are resumable and land in a sweep CSV);
3. calibrates the simulator's serving costs on TWO of those runs per model: the greedy
   configuration on the steady trace (batches of 1) and the largest batch size with the longest
   wait on the bursty one (:mod:`loadgen.calibrate` fits batch time against size and arrivals,
   which needs small and large batches, steady and bursty arrivals), then simulates
   every other configuration, on both traces, from the trace, the profile and that calibration
   alone, and reports the simulator's relative error on p99 latency and J/request against the
   measurement, with the ±15 % target. Calibration runs are listed but left out of the statistics.

Everything lands in ``results/bench-sim/`` (the traces, profiles, sweep CSVs and ``report.json``); the
figures are printed. An interrupted check resumes: the traces and the sweeps' finished rows are
kept (``--reuse-profiles`` keeps the profiles too). Measured and predicted energy carry the same
source (the profile's and the server's meter are the same kind).

settings (:mod:`~studies.simcheck.settings`) · run (:mod:`~studies.simcheck.run`) · report
(:mod:`~studies.simcheck.report`) · cli (:mod:`~studies.simcheck.cli`).
"""
