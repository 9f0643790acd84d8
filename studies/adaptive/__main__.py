"""``python -m studies.adaptive`` (``make bench-adaptive``): the adaptive-batching study."""

import sys

from studies.adaptive.cli import run

sys.exit(run("bench-adaptive", sys.argv[1:]))
