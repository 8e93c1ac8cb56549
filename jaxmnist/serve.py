"""`python -m jaxmnist.serve`: a local page where you draw a digit and watch the model read it.

The command lives in jaxmnist/apps/serve.py."""

import sys

from jaxmnist import cli

if __name__ == "__main__":
    sys.exit(cli.run("serve"))
