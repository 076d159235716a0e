"""``python -m lychee_memory.cli``: the same as the ``lychee`` script."""

import sys

from . import main

sys.exit(main())
