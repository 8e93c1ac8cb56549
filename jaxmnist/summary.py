"""`python -m jaxmnist.summary`: the command's entry point; it lives in jaxmnist/apps/summary.py."""

import sys

from jaxmnist.apps.summary import main

if __name__ == "__main__":
    sys.exit(main())
