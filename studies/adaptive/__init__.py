"""The adaptive-batching study (issue 14, item 3): does the energy-aware adaptive policy, given only a
p99 objective, beat every static batching setting and the usual baselines, on real servers?
(``greenserve bench-adaptive``, ``make bench-adaptive``, ``python -m studies.adaptive``;
docs/adaptive.md.)

For each model and each of three traces (diurnal: the rate sweeps ~10× and back; bursty: on/off
steps; steady Poisson — one file per trace, the same seed, replayed for every policy), each policy
gets a fresh ``greenserve serve`` and the trace replayed open-loop (:func:`loadgen.loadtest.run_trace`):

* every static configuration of a grid (``max_batch_size`` × ``max_wait_ms``); the best per trace,
  chosen in hindsight among those meeting the objective, is ``static_best``;
* ``triton_like``: static, the grid's largest batch, Triton's starting queue delay (100 µs);
* ``latency_adaptive``: ``--batching latency-adaptive --slo-p99-ms X`` (BentoML-like);
* ``adaptive``: ``--batching adaptive --slo-p99-ms X``, nothing else.

Each run's row (``adaptive.csv``) holds J/request attributed and amortised, p50 and p99, its
10-second windows over the objective (from the request log, by arrival time), requests answered,
the energy source, and the simulator's prediction of the same run beside it.

settings (:mod:`~studies.adaptive.settings`) · table (:mod:`~studies.adaptive.table`) · run
(:mod:`~studies.adaptive.run`) · analysis (:mod:`~studies.adaptive.analysis`: windows, hindsight,
summary.json, targets; pure) · report and plots (:mod:`~studies.adaptive.report`,
:mod:`~studies.adaptive.plots`: from the table alone) · cli (:mod:`~studies.adaptive.cli`).
"""
