"""`python -m jaxmnist` is `python -m jaxmnist.train`."""

import sys

from jaxmnist.apps.train import main

sys.exit(main())
