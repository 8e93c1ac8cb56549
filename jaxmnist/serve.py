"""`python -m jaxmnist.serve`: a local web page where a person draws a digit and the model reads it.

    python -m jaxmnist.serve --workdir runs/mnist            # then open http://127.0.0.1:8000

The page sends the drawing as a PNG while it is drawn; the server prepares it exactly as
`jaxmnist.predict` prepares a file (jaxmnist.prepare.prepare_digit) and answers with the ten
probabilities and the 28x28 image the model saw. A small Starlette app (pip install
'jaxmnist[serve]'), served by uvicorn on localhost unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import io
import socket
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from jaxmnist.config import checkpoint_parser
from jaxmnist.errors import UserError
from jaxmnist.reporting import log, run_command, setup_console


class ServeError(UserError):
    """The page cannot be served; the message is one sentence."""


def create_app(predict: Callable, run: dict[str, Any]):
    """The Starlette app: GET / (the page), GET /run (which model), POST /predict (PNG in, JSON out)."""
    from PIL import Image
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    from jaxmnist.prepare import NotADigit, prepare_digit

    page = resources.files("jaxmnist").joinpath("static/draw.html").read_text()

    async def index(_request):
        return HTMLResponse(page)

    async def which_run(_request):
        return JSONResponse(run)

    async def read_drawing(request):
        try:
            digit = prepare_digit(Image.open(io.BytesIO(await request.body())))
        except NotADigit:
            return JSONResponse({"error": "Draw a digit: the page is blank."}, status_code=422)
        except (OSError, SyntaxError, Image.DecompressionBombError):
            return JSONResponse({"error": "The drawing could not be read as an image."}, status_code=400)
        probabilities = predict(digit[None])[0]
        return JSONResponse({"digit": int(probabilities.argmax()), "probabilities": [float(p) for p in probabilities],
                             "image": digit.tolist()})

    return Starlette(routes=[Route("/", index), Route("/run", which_run),
                             Route("/predict", read_drawing, methods=["POST"])])


def _port(text: str) -> int:
    """--port's type: a TCP port number, or argparse's one-line error."""
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 65536):
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text!r}")
    return int(text)


def _check_port(host: str, port: int) -> None:
    """Fail in one sentence before loading anything when the address cannot be served."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise ServeError(f"Cannot serve on {host}:{port} ({reason}); check --host and --port.") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = checkpoint_parser(prog="python -m jaxmnist.serve", description="Serve a local page where you draw a digit and "
                           "the model reads it as you draw.")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=_port, default=8000, help="the port, 1-65535 (default: %(default)s)")
    args = parser.parse_args(argv)
    setup_console()
    return run_command(lambda: _serve(args))


def _serve(args) -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise ServeError("The drawing page needs starlette and uvicorn: pip install -e '.[serve]' in the jaxmnist "
                         "checkout.") from None
    _check_port(args.host, args.port)
    from jaxmnist.evaluate import predictor, restore_model

    model, variables, meta, step = restore_model(args.workdir, args.step)
    app = create_app(predictor(model, variables), {"workdir": str(Path(args.workdir)), "step": step, "epoch": meta["epoch"]})
    log.info("The drawing page of %s (step %d) is at http://%s:%d/ ; Ctrl-C stops it.",
             args.workdir, step, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    sys.exit(main())
