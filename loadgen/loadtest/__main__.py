"""``python -m loadgen.loadtest`` (``make loadtest``)."""

from loadgen.loadtest.cli import main

raise SystemExit(main())
