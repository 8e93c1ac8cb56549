"""`python -m jaxmnist.sweep`: see jaxmnist.sweep.command."""

import sys

from jaxmnist.sweep.command import main

sys.exit(main())
