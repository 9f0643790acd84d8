"""``python -m studies.simcheck``: the simulator check (``make bench-sim``)."""

from studies.simcheck.cli import main

raise SystemExit(main())
