"""The batch-configuration sweep: which batching settings cost the least energy per request at an
acceptable latency, for which model (``greenserve sweep``, ``make sweep``; docs/sweep.md).

For each configuration of a grid (model × ``max_batch_size`` × ``max_wait_ms``, plus a "greedy"
mode per model) the sweep starts a real ``greenserve serve`` on a free loopback port, replays the
*same* trace against it with Locust in open-loop mode (:func:`loadgen.loadtest.run_trace`), reads
the figures from the responses and from the server's ``/metrics``, stops the server, and records
one row in ``sweep.csv``. It talks to the service only over HTTP.

The parts, each its own module:

* :mod:`studies.sweep.settings` — the grid (:class:`SweepSettings`, :class:`SweepConfig`,
  :func:`configurations`) and the generated trace (:class:`TraceSettings`);
* :mod:`studies.sweep.table` — ``sweep.csv``: its columns, read and rewritten atomically;
* :mod:`studies.sweep.run` — the measurement: announces its plan, resumes, shows its progress;
* :mod:`studies.sweep.report` — ``summary.md`` and the figures, from the table alone;
* :mod:`studies.sweep.cli` — ``greenserve sweep``.

* **Resumable.** A configuration whose row is in the CSV with ``status == ok`` is skipped; a failed
  one (the server did not start, Locust failed) is recorded with its error and retried next time.
  Rows of another trace (its SHA-256 differs) are refused rather than mixed.
* **Greedy** ("take whatever is queued") is ``max_wait_ms = 0`` with ``max_batch_size`` equal to
  the largest size of the grid (``--greedy-max-batch-size`` to change it): a batch is cut as soon
  as the model is free, with everything that queued meanwhile. It is run once per model, whatever
  the waits.
* **The report** (``summary.md``, ``pareto.png``, ``energy-vs-batch.png``) is drawn from the CSV
  alone, so a finished or interrupted sweep can be redrawn with ``greenserve sweep --report-only``.
  The recommendation is, per model, the configuration with the lowest J/request among those whose
  p99 latency meets the user's target and which rejected nothing and failed nothing.
* **Two J/request figures**, each labelled with its source and what it holds (columns
  ``j_per_request_label`` and ``amortised_label``): ``j_per_request``, the energy the server
  *attributed* to the requests answered 200 (idle excluded; what the recommendation ranks), and
  ``amortised_j_per_request``, every device's energy over the run (idle included where the meter
  includes it) ÷ those requests: the operator's bill. A table written before the amortised columns
  existed is resumed as it is (its rows have no amortised figure) and rewritten with them.
"""
