"""The energy accounting benchmark: does the per-request energy figure hold under load, against a
known truth (``python -m studies.accounting``, ``make bench-energy``; docs/energy.md)?

settings (:mod:`~studies.accounting.settings`) · run (:mod:`~studies.accounting.run`: one real server
per energy source under a steady closed loop) · report (:mod:`~studies.accounting.report`: the four
figures per source) · cli (:mod:`~studies.accounting.cli`).
"""
