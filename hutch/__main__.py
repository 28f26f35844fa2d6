"""``python -m hutch`` is the ``hutch`` command."""

import sys

from hutch.tools.cli import main

sys.exit(main())
