"""``python -m mbt`` (and ``torchrun -m mbt train ...``) runs the ``mbt`` command line."""

import sys

from mbt.cli import main

if __name__ == "__main__":
    sys.exit(main())
