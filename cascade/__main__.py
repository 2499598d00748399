"""``python -m cascade`` is the ``cascade`` command."""

import sys

from cascade.cli import main

sys.exit(main())
