"""`python -m jaxmnist.sweep`: run every combination of seeds and flags as ordinary runs, then a table of mean +- std.

The command lives in jaxmnist/apps/sweep/."""

import sys

from jaxmnist import cli

if __name__ == "__main__":
    sys.exit(cli.run("sweep"))
