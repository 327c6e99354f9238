"""``python -m ami_server``: the same as the ``ami-server`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
