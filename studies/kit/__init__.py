"""The lab's shared kit: what every study needs, once.

- :mod:`studies.kit.errors` — :class:`LabError`, the root of the lab's user errors (one line, exit 2);
- :mod:`studies.kit.files` — atomic writes (text, JSON, CSV) and resumable result tables;
- :mod:`studies.kit.plots` — matplotlib figures without pyplot's global state, saved atomically;
- :mod:`studies.kit.stats` — Kruskal–Wallis with η², mean/std, Pareto fronts;
- :mod:`studies.kit.flags` — command-line flags generated from a settings dataclass, common names;
- :mod:`studies.kit.server` — a ``greenserve serve`` process on loopback for a measurement;
- :mod:`studies.kit.machine` — the machine a result was measured on, and CPU-time accounting;
- :mod:`studies.kit.results` — ``--report FILE``: reading a finished run's JSON result back;
- :mod:`studies.kit.commands` — a user or usage error as one line and exit 2, a closed pipe as success.

The kit imports nothing else of the lab, so any lab package may use it.
"""
