"""`python -m jaxmnist.serve`: a local web page where a person draws a digit and the model reads it.

    python -m jaxmnist.serve --workdir runs/mnist            # then open http://127.0.0.1:8000

The page sends the drawing as a PNG while it is drawn; the server reads and prepares it exactly
as `jaxmnist.apps.predict` does a file (jaxmnist.apps.picture, jaxmnist.apps.prepare) and answers with the ten
probabilities and the 28x28 image the model saw. A small Starlette app (pip install
'jaxmnist[serve]'), served by uvicorn on localhost unless --host says otherwise.

Only this machine's pages can use it: requests must name it in their Host header (localhost, the
address served on) and send image/png, which a page of another site cannot do without asking.
Decoding and the model run on worker threads, so one large picture does not hold up the others.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from jaxmnist.apps.picture import BadPicture, open_picture
from jaxmnist.apps.prepare import PREPARE, NotADigit, prepare_digit
from jaxmnist.datasets import DATASETS, a_or_an
from jaxmnist.config import checkpoint_parser
from jaxmnist.errors import UserError
from jaxmnist.runtime.reporting import log
from jaxmnist.apps.console import run_command, setup_console


class ServeError(UserError):
    """The page cannot be served; the message is one sentence."""


MAX_BODY_BYTES = 20_000_000  # a phone photo fits; the page's drawings are a few kilobytes
# Pictures above this many pixels are decoded one at a time on a thread of their own, at a lower
# CPU priority, so that large uploads can neither take every core and gigabytes at once nor slow
# the page's drawings.
LARGE_PIXELS = 4_000_000
LOCAL_NAMES = ("localhost", "127.0.0.1", "[::1]")


class TooLarge(Exception):
    """A request body passed MAX_BODY_BYTES while it was read."""


def allowed_hosts(bound_host: str) -> list[str]:
    """The Host names a request may carry: this machine's names and the address served on. Any other
    is a page elsewhere reaching this one through DNS rebinding, and gets 400."""
    bound = f"[{bound_host}]" if ":" in bound_host else bound_host  # an IPv6 address, as in a Host header
    return list(dict.fromkeys([*LOCAL_NAMES, bound.lower()]))


def create_app(model: "ServedModel", hosts: Sequence[str] = LOCAL_NAMES):
    """The Starlette app: GET / (the page), GET /run (which model), POST /predict (PNG in, JSON out)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import ClientDisconnect
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    page = resources.files("jaxmnist.apps").joinpath("static/draw.html").read_text()
    large_pictures = ThreadPoolExecutor(max_workers=1, thread_name_prefix="large-pictures", initializer=_yield_cpu)

    async def index(_request):
        return HTMLResponse(page)

    async def which_run(_request):
        return JSONResponse(await run_in_threadpool(model.follow_workdir))

    async def read_drawing(request):
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "image/png":
            # Also what keeps other web sites out: a page elsewhere can send only form and text
            # types without asking first, and this server never says yes.
            return JSONResponse({"error": "Send the drawing as a PNG (Content-Type: image/png), as the page does."},
                                status_code=415)
        try:
            body = await _read_body(request, MAX_BODY_BYTES)
        except TooLarge:
            return JSONResponse({"error": f"The picture is larger than {MAX_BODY_BYTES:,} bytes."}, status_code=413)
        except ClientDisconnect:  # the page moved on; no one reads an answer
            return Response(status_code=400)
        try:
            picture = open_picture(io.BytesIO(body))  # the header alone: cheap enough for the event loop
            if picture.width * picture.height > LARGE_PIXELS:
                work = asyncio.get_running_loop().run_in_executor(large_pictures, _read_digit, picture, model.predict,
                                                                  model.prepare)
            else:
                work = run_in_threadpool(_read_digit, picture, model.predict, model.prepare)
            digit, probabilities = await work
        except NotADigit:
            return JSONResponse({"error": f"Draw {a_or_an(model.dataset.item)}: the page is blank."}, status_code=422)
        except BadPicture as error:
            return JSONResponse({"error": f"The picture {error}."}, status_code=400)
        label = int(probabilities.argmax())
        return JSONResponse({"digit": label, "class": model.dataset.classes[label],
                             "probabilities": [float(p) for p in probabilities], "image": digit.tolist()})

    return Starlette(routes=[Route("/", index), Route("/run", which_run),
                             Route("/predict", read_drawing, methods=["POST"])],
                     middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))])


async def _read_body(request, limit: int) -> bytes:
    """The request's body, refused as soon as it passes limit bytes (a declared length first)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge
    return bytes(body)


def _yield_cpu() -> None:
    """Lower this thread's CPU priority where a thread has its own (Linux); elsewhere keep it."""
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _read_digit(picture, predict: Callable, prepare: Callable = prepare_digit):
    """Decode, prepare (as the run's dataset's images were made) and classify: the work that runs
    on a worker thread."""
    with picture:
        digit = prepare(picture)
    return digit, predict(digit[None])[0]


class ServedModel:
    """The model the page uses, following its workdir: when the checkpoint --step names has changed
    (a new best epoch, a run trained again with --restart), the next GET /run loads the new one."""

    def __init__(self, workdir: str | Path, step: str = "best"):
        self.workdir, self.asked = Path(workdir), step
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        from jaxmnist.apps.evaluate import dataset_name, predictor, restore_model

        model, variables, self.meta, self.step = restore_model(self.workdir, self.asked)
        self.dataset = DATASETS[dataset_name(self.meta)]
        self.prepare = PREPARE[self.dataset.prepare]
        self.predict = predictor(model, variables)  # one assignment: a request in flight keeps the model it took

    def follow_workdir(self) -> dict[str, Any]:
        """The /run record: the step served, after loading the checkpoint --step names now if it has
        changed; "stale" says in a sentence why an older one is still served (else null)."""
        from jaxmnist.apps.evaluate import resolve_step
        from jaxmnist.runtime.checkpoint import Checkpoints

        stale = None
        with self._lock:
            try:
                with Checkpoints(self.workdir / "checkpoints", read_only=True) as checkpoints:
                    now = resolve_step(checkpoints, self.asked)
                    changed = now != self.step or checkpoints.meta(now) != self.meta
                if changed:
                    self._load()
            except UserError as error:  # a --restart has set the old checkpoints aside; a model not registered here
                stale = f"Still serving step {self.step}: {error}"
            return {"workdir": str(self.workdir), "step": self.step, "epoch": self.meta["epoch"], "follows": self.asked,
                    "stale": stale, "dataset": self.dataset.title, "item": a_or_an(self.dataset.item),
                    "classes": list(self.dataset.classes)}


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
    model = ServedModel(args.workdir, args.step)
    app = create_app(model, allowed_hosts(args.host))
    log.info("The drawing page of %s (step %d) is at http://%s:%d/ ; Ctrl-C stops it.",
             args.workdir, model.step, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
