"""`python -m jaxmnist.plot`: the command's entry point; it lives in jaxmnist/apps/plot.py."""

import sys

from jaxmnist.apps.plot import main

if __name__ == "__main__":
    sys.exit(main())
