"""`python -m jaxmnist` is the `jaxmnist` command: `python -m jaxmnist train --epochs 1`."""

import sys

from jaxmnist import cli

sys.exit(cli.main())
