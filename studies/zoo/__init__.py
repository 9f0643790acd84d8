"""The model-zoo study: energy per image and latency of 18 vision networks from 2012 to 2022 against
their ImageNet accuracy, on this machine, and verdicts on the Green AI finding (docs/zoo.md).

- :mod:`studies.zoo.catalog` — the networks, with their papers and torchvision's metadata;
- :mod:`studies.zoo.settings` — :class:`~studies.zoo.settings.ZooSettings`, the defaults and quick mode;
- :mod:`studies.zoo.plan` — the cells, the time estimate and the announcement (pure);
- :mod:`studies.zoo.run` — the measurement: resumable, announced, with a progress bar;
- :mod:`studies.zoo.table` — ``zoo_measurements.csv``: columns, statuses, reader;
- :mod:`studies.zoo.stats` — the verdicts and the Pareto front, from the table alone (pure);
- :mod:`studies.zoo.report`, :mod:`studies.zoo.plots` — the summary, tables and figures;
- :mod:`studies.zoo.cli` — ``greenserve zoo [run|report|list]``.

Nothing here imports torch at import time.
"""
