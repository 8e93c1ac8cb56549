"""`python -m jaxmnist.export`: the command's entry point; it lives in jaxmnist/apps/export.py."""

import sys

from jaxmnist.apps.export import main

if __name__ == "__main__":
    sys.exit(main())
