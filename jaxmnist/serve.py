"""`python -m jaxmnist.serve`: the command's entry point; it lives in jaxmnist/apps/serve.py."""

import sys

from jaxmnist.apps.serve import main

if __name__ == "__main__":
    sys.exit(main())
