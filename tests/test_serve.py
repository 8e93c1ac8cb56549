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
from PIL import Image

from jaxmnist.config import Config
from conftest import SHARED_DATA, needs_real_mnist

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = needs_real_mnist


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch on 10,000 real training images."""
    from jaxmnist.data import load_idx
    from jaxmnist.run import train_and_evaluate

    mnist = load_idx(str(SHARED_DATA / "mnist-idx"))
    small = mnist._replace(train_images=mnist.train_images[:10_000], train_labels=mnist.train_labels[:10_000])
    workdir = tmp_path_factory.mktemp("model")
    train_and_evaluate(Config(workdir=str(workdir), epochs=1, allow_small_data=True, cache_dir=""), small)
    return workdir, mnist


def test_the_server_prepares_a_drawing_as_predict_prepares_a_file(trained):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from jaxmnist.evaluate import load_model
    from jaxmnist.prepare import prepare_digit
    from jaxmnist.serve import create_app

    workdir, mnist = trained
    predict = load_model(workdir)
    client = TestClient(create_app(predict, {"workdir": str(workdir), "step": 157, "epoch": 1}))
    assert "Draw a digit" in client.get("/").text
    drawing = Image.fromarray(255 - mnist.test_images[0]).resize((280, 280))  # dark ink on a white pad
    png = io.BytesIO()
    drawing.save(png, "PNG")
    answer = client.post("/predict", content=png.getvalue(), headers={"Content-Type": "image/png"}).json()
    expected = prepare_digit(drawing)
    assert answer["image"] == expected.tolist()  # one preparation for both
    np.testing.assert_allclose(answer["probabilities"], predict(expected[None])[0], rtol=1e-6)
    blank = io.BytesIO()
    Image.new("RGB", (280, 280), "white").save(blank, "PNG")
    refused = client.post("/predict", content=blank.getvalue())
    assert refused.status_code == 422 and refused.json() == {"error": "Draw a digit: the page is blank."}


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
