"""`python -m jaxmnist.predict`: read the digit in your own pictures.

The command lives in jaxmnist/apps/predict.py."""

import sys

from jaxmnist import cli

if __name__ == "__main__":
    sys.exit(cli.run("predict"))
