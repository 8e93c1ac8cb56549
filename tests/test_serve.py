"""The drawing page: the server answers drawings as predict answers files, and a real browser
(headless Chromium, driven by Playwright) draws a 1 and a 0 and reads the model's answers."""

import io
import math
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, needs_real_mnist
from PIL import Image

from jaxmnist.apps.prepare import prepare_digit
from jaxmnist.config import Config
from jaxmnist.datasets import DATASETS

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = needs_real_mnist


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch on 10,000 real training images."""
    from jaxmnist.data import load_idx
    from jaxmnist.runtime.run import train_and_evaluate

    mnist = load_idx(str(SHARED_DATA / "mnist-idx"))
    small = mnist._replace(train_images=mnist.train_images[:10_000], train_labels=mnist.train_labels[:10_000])
    workdir = tmp_path_factory.mktemp("model")
    train_and_evaluate(Config(workdir=str(workdir), epochs=1, allow_small_data=True, cache_dir=""), small)
    return workdir, mnist


def _png(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


PNG = {"Content-Type": "image/png"}


def test_the_server_prepares_a_drawing_as_predict_prepares_a_file(trained):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from jaxmnist.apps.prepare import prepare_digit
    from jaxmnist.apps.serve import ServedModel, create_app

    workdir, mnist = trained
    model = ServedModel(workdir)
    client = TestClient(create_app(model), base_url="http://localhost:8000")
    assert 'Draw <span id="item">a digit</span>' in client.get("/").text  # the run's dataset's item, from /run
    drawing = Image.fromarray(255 - mnist.test_images[0]).resize((280, 280))  # dark ink on a white pad
    answer = client.post("/predict", content=_png(drawing), headers=PNG).json()
    expected = prepare_digit(drawing)
    assert answer["image"] == expected.tolist()  # one preparation for both
    np.testing.assert_allclose(answer["probabilities"], model.predict(expected[None])[0], rtol=1e-6)
    refused = client.post("/predict", content=_png(Image.new("RGB", (280, 280), "white")), headers=PNG)
    assert refused.status_code == 422 and refused.json() == {"error": "Draw a digit: the page is blank."}


def test_only_this_machine_s_pages_and_bounded_pictures_are_answered(trained):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient
    from test_predict import png_header

    from jaxmnist.apps.picture import MAX_PIXELS
    from jaxmnist.apps.serve import (
        MAX_BODY_BYTES,
        ServedModel,
        allowed_hosts,
        create_app,
    )

    workdir, mnist = trained
    app = create_app(ServedModel(workdir), allowed_hosts("192.168.1.5"))
    drawing = _png(Image.fromarray(255 - mnist.test_images[0]))
    for host, status in (("localhost:8000", 200), ("127.0.0.1", 200), ("[::1]:8000", 200), ("192.168.1.5:8000", 200),
                         ("evil.example", 400), ("localhost.evil.example:8000", 400)):
        reply = TestClient(app).post("/predict", content=drawing, headers={**PNG, "Host": host})
        assert reply.status_code == status, host
        assert TestClient(app).get("/run", headers={"Host": host}).status_code == status, host
    client = TestClient(app, base_url="http://localhost")
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        reply = client.post("/predict", content=drawing, headers={"Content-Type": kind} if kind else {})
        assert reply.status_code == 415 and "image/png" in reply.json()["error"], kind
    huge = client.post("/predict", content=png_header(10_000, 10_000), headers=PNG)
    assert huge.status_code == 400 and huge.json() == {
        "error": f"The picture has more than {MAX_PIXELS:,} pixels, too many for a picture of one digit."}
    too_long = client.post("/predict", content=b"\0" * (MAX_BODY_BYTES + 1), headers=PNG)
    assert too_long.status_code == 413 and too_long.json() == {"error": f"The picture is larger than {MAX_BODY_BYTES:,} bytes."}
    streamed = client.post("/predict", content=iter([b"\0" * 1_000_000] * 21), headers=PNG)  # no length declared
    assert streamed.status_code == 413


class _WaitingModel:
    """A stand-in model whose predict holds its thread until another request has been answered."""

    def __init__(self):
        import threading

        self.other_answered = threading.Event()

    dataset = DATASETS["mnist"]
    prepare = staticmethod(prepare_digit)

    def predict(self, images):
        waited = self.other_answered.wait(timeout=10)
        probabilities = np.zeros((len(images), 10), np.float32)
        probabilities[:, 1 if waited else 0] = 1.0
        return probabilities

    def follow_workdir(self):
        self.other_answered.set()
        return {"step": 1}


def test_a_slow_picture_does_not_hold_up_the_others():
    pytest.importorskip("starlette")
    import asyncio

    import httpx

    from jaxmnist.apps.serve import create_app

    model = _WaitingModel()
    drawing = np.full((60, 60), 255, np.uint8)
    drawing[10:50, 28:32] = 0

    async def both():
        transport = httpx.ASGITransport(app=create_app(model))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            slow = asyncio.create_task(client.post("/predict", content=_png(Image.fromarray(drawing)), headers=PNG))
            await asyncio.sleep(0.2)
            await client.get("/run")  # answered while the slow one's model still runs
            return (await slow).json()

    assert asyncio.run(both())["digit"] == 1  # on the event loop, it would have waited 10 s and said 0


def test_a_client_that_went_away_is_no_traceback(caplog):
    pytest.importorskip("starlette")
    import asyncio

    from jaxmnist.apps.serve import create_app

    sent = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
             "root_path": "", "scheme": "http", "http_version": "1.1", "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"image/png")]}
    asyncio.run(create_app(_WaitingModel())(scope, receive, send))  # raised ClientDisconnect before
    assert sent[0]["status"] == 400 and not caplog.records


def test_the_page_keeps_its_model_and_says_so_when_the_workdir_loses_its_checkpoints(trained, tmp_path):
    import shutil

    from jaxmnist.apps.serve import ServedModel

    shutil.copytree(trained[0], tmp_path / "run")
    model = ServedModel(tmp_path / "run")
    first = model.predict
    assert model.follow_workdir() == {"workdir": str(tmp_path / "run"), "step": 157, "epoch": 1, "follows": "best",
                                      "stale": None, "dataset": "MNIST", "item": "a digit", "classes": list("0123456789")}
    assert model.predict is first  # nothing changed, nothing loaded
    shutil.move(tmp_path / "run" / "checkpoints", tmp_path / "aside")  # as a --restart does before its first save
    record = model.follow_workdir()
    assert record["step"] == 157 and record["stale"].startswith("Still serving step 157: ") and model.predict is first


@pytest.mark.slow
def test_the_page_follows_the_workdir_to_a_run_trained_again(trained, tmp_path):
    """A training run (about 30 s on two shared cores): slow."""
    import shutil

    from conftest import make_mnist

    from jaxmnist.apps.serve import ServedModel
    from jaxmnist.runtime.run import train_and_evaluate

    shutil.copytree(trained[0], tmp_path / "run")
    model = ServedModel(tmp_path / "run")
    first = model.predict
    tiny = make_mnist(200, 30)
    train_and_evaluate(Config(workdir=str(tmp_path / "run"), epochs=1, allow_small_data=True, cache_dir="", restart=True),
                       tiny)  # the run trained again: 4 steps of other images
    assert model.follow_workdir()["step"] == 4 and model.predict is not first
    images = tiny.test_images[:5]
    np.testing.assert_allclose(model.predict(images), ServedModel(tmp_path / "run").predict(images), rtol=1e-6)


def test_a_missing_run_is_one_line():
    result = subprocess.run([sys.executable, "-m", "jaxmnist.serve", "--workdir", "/no/such/run", "--port", str(_free_port())],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip() == "--workdir /no/such/run does not exist."
    bad_port = subprocess.run([sys.executable, "-m", "jaxmnist.serve", "--port", "99999"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
    assert bad_port.returncode == 2 and bad_port.stderr.strip() == (
        "python -m jaxmnist.serve: error: argument --port: must be a port number from 1 to 65535, got '99999'")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stroke(mouse, points):
    mouse.move(*points[0])
    mouse.down()
    for point in points[1:]:
        mouse.move(*point, steps=2)
    mouse.up()


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_a_browser_draws_a_one_and_a_zero_and_reads_them(trained, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    workdir, _ = trained
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "jaxmnist.serve", "--workdir", str(workdir), "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "drawing page" in server.stdout.readline()
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 900, "height": 520})
            page.goto(f"http://127.0.0.1:{port}/")
            box = page.locator("#pad").bounding_box()
            x, y = box["x"], box["y"]
            readings = {}
            for digit, points in (
                ("1", [(x + 140, y + 40 + 10 * i) for i in range(21)]),
                ("0", [(x + 140 + 60 * math.sin(t / 20 * 2 * math.pi), y + 140 - 95 * math.cos(t / 20 * 2 * math.pi))
                       for t in range(22)]),
            ):
                page.click("#clear")
                _stroke(page.mouse, points)
                page.wait_for_function("document.getElementById('digit').textContent !== ''", timeout=30_000)
                time.sleep(0.5)  # the last request of the stroke
                readings[digit] = page.inner_text("#digit")
                if digit == "0":
                    page.screenshot(path=str(tmp_path / "page.png"))
            browser.close()
        assert readings == {"1": "1", "0": "0"}
    finally:
        server.terminate()
        server.wait(timeout=30)
