"""`python scripts/plot.py` is `jaxmnist plot` (jaxmnist/plot.py): a run's figures."""

import sys

from jaxmnist.apps.plot import main

if __name__ == "__main__":
    sys.exit(main())
