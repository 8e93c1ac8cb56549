"""`python -m jaxmnist.train`: the command's entry point; it lives in jaxmnist/apps/train.py."""

import sys

from jaxmnist.apps.train import main

if __name__ == "__main__":
    sys.exit(main())
