"""`python -m jaxmnist.summary`: a model's layers: output shapes, parameters, multiply-adds (--model lab|resnet).

The command lives in jaxmnist/apps/summary.py."""

import sys

from jaxmnist import cli

if __name__ == "__main__":
    sys.exit(cli.run("summary"))
