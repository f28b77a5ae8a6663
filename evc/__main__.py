"""``python -m evc`` runs the command line."""

import sys

from evc.cli.main import main

sys.exit(main())
