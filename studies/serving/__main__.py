"""``python -m studies.serving``: the serving benchmark (``make bench``)."""

from studies.serving.cli import main

raise SystemExit(main())
