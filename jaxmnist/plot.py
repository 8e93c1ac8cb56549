"""`python -m jaxmnist.plot`: a run's figures: curves, samples, structure, confusion matrix, misclassified digits.

The command lives in jaxmnist/apps/plot.py."""

import sys

from jaxmnist import cli

if __name__ == "__main__":
    sys.exit(cli.run("plot"))
