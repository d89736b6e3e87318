"""``python -m chequered``: the same as the ``chequered`` command."""

import sys

from chequered.cli.main import main

sys.exit(main())
