"""`python -m jaxmnist.evaluate`: the command's entry point; it lives in jaxmnist/apps/evaluate.py."""

import sys

from jaxmnist.apps.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
