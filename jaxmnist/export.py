"""`python -m jaxmnist.export`: write the model as a jax.export artifact (and ONNX) to run without jaxmnist.

The command lives in jaxmnist/apps/export.py."""

import sys

from jaxmnist import cli

if __name__ == "__main__":
    sys.exit(cli.run("export"))
