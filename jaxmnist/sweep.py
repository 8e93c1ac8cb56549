"""`python -m jaxmnist.sweep`: the command's entry point; it lives in jaxmnist/apps/sweep/command.py."""

import sys

from jaxmnist.apps.sweep.command import main

if __name__ == "__main__":
    sys.exit(main())
