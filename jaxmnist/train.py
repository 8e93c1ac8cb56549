"""`python -m jaxmnist.train`: train the lab's CNN (or --model resnet), test it after every epoch, keep the best; resumes.

The command lives in jaxmnist/apps/train.py."""

import sys

from jaxmnist import cli

if __name__ == "__main__":
    sys.exit(cli.run("train"))
