"""`python -m jaxmnist` is `python -m jaxmnist.train`."""

import sys

from jaxmnist.train import main

sys.exit(main())
