"""``python -m evc.fuzz``: see :mod:`evc.fuzz.cli`."""

import sys

from evc.fuzz.cli import main

if __name__ == "__main__":
    sys.exit(main())
