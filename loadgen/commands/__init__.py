"""The load generator's sub-commands of ``greenserve``: one module per command, each with ``register``."""
