"""``python -m studies.accounting``: the energy accounting benchmark (``make bench-energy``)."""

from studies.accounting.cli import main

raise SystemExit(main())
