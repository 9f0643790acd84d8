"""``python -m greenserve`` is the ``greenserve`` command."""

from greenserve.cli import main

raise SystemExit(main())
