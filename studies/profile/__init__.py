"""The offline model profile: latency and energy per batch size, measured without HTTP
(``greenserve profile``; docs/simulator.md).

* :mod:`studies.profile.format` — :class:`~studies.profile.format.ModelProfile` and its files, what
  the queue simulator (:mod:`loadgen.simulate`) reads; it imports nothing of the measurement;
* :mod:`studies.profile.settings` — which model, served how, profiled at which sizes for how long;
* :mod:`studies.profile.run` — the measurement: announces its plan, a progress bar over the sizes;
* :mod:`studies.profile.report` — the profile as a table on the terminal;
* :mod:`studies.profile.cli` — ``greenserve profile``.
"""
