"""``python -m omniplug ...`` is the ``omniplug`` command."""

import sys

from omniplug.cli import main

sys.exit(main())
