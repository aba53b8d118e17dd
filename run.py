"""FaceMimic: run `python run.py --help`."""

import sys

from avatarcam.cli import main

if __name__ == "__main__":
    sys.exit(main())
