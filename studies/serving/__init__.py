"""The serving benchmark: offline predict vs greenserve over HTTP, and greenserve's no-op overhead vs a
bare FastAPI app (``python -m studies.serving``, ``make bench``; docs/benchmarks.md).

settings (:mod:`~studies.serving.settings`: the settings, the plan, the estimate) · run
(:mod:`~studies.serving.run`, with :mod:`~studies.serving.offline`, :mod:`~studies.serving.served`,
:mod:`~studies.serving.client`, :mod:`~studies.serving.bare_app`) · report
(:mod:`~studies.serving.summary`, pure figures; :mod:`~studies.serving.report`, the tables) · cli
(:mod:`~studies.serving.cli`).
"""
