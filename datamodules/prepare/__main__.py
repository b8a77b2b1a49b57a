"""``python -m datamodules.prepare``: see ``datamodules.prepare``."""

import logging
import sys

from datamodules.prepare import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(main())
