"""`python -m jaxmnist.evaluate`: restore a checkpoint and analyse its errors on the test set.

The command lives in jaxmnist/apps/evaluate.py."""

import sys

from jaxmnist import cli

if __name__ == "__main__":
    sys.exit(cli.run("evaluate"))
