"""Benchmarks of the serving path: ``python -m bench.serving`` (``make bench``); see docs/benchmarks.md."""
