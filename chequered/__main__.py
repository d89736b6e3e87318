"""``python -m chequered``: the same as the ``chequered`` command."""

import sys

from chequered.cli import main

sys.exit(main())
