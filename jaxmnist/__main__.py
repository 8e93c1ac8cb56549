"""`python -m jaxmnist` is `python -m jaxmnist.train`."""

import sys

from jaxmnist import cli

sys.exit(cli.run("train"))
