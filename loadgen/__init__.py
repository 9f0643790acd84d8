"""Load generation against a running greenserve (traces, Locust, sweeps, queue simulator)."""
