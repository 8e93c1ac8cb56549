"""`python -m jaxmnist.predict`: the command's entry point; it lives in jaxmnist/apps/predict.py."""

import sys

from jaxmnist.apps.predict import main

if __name__ == "__main__":
    sys.exit(main())
