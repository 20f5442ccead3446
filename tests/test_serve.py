"""dreamlet serve: the JSON API (FastAPI's TestClient), its limits, the run view, the CLI's errors, and the page
itself in headless Chromium against the real server."""
import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason='dreamlet serve needs pip install "dreamlet[serve]"')
from fastapi.testclient import TestClient  # noqa: E402

import dreamlet  # noqa: E402
from dreamlet.cli import main  # noqa: E402
from dreamlet.data.shapes import canonical_caption, place, random_pair, render, Scene  # noqa: E402
from dreamlet.pipeline import Pipeline  # noqa: E402
from dreamlet.serve import NO_VERDICT, Limits, create_app, verdict  # noqa: E402

PROMPT = "a large red circle at the top left"


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


@pytest.fixture(scope="module")
def client(tiny_run):
    with TestClient(create_app([tiny_run / "model"], [tiny_run], Limits(max_images=4, max_steps=20))) as c:
        yield c


def test_generate_returns_the_pipelines_pictures_and_verdicts(client, tiny_run):
    body = {"prompt": PROMPT, "seed": 3, "num": 2, "steps": 2, "guidance": 2.5}
    r = client.post("/api/generate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["seed"] == 3 and out["seeds"] == [3, 4] and len(out["images"]) == 2
    images = [decode(b64) for b64 in out["images"]]
    assert all(im.size == (32, 32) and im.mode == "RGB" for im in images)
    # exactly what the Python API draws for the same arguments, and again for the same seed
    expected = dreamlet.load(tiny_run / "model")(PROMPT, seed=3, num=2, steps=2, guidance=2.5)
    assert all((np.asarray(a) == np.asarray(b)).all() for a, b in zip(images, expected))
    assert client.post("/api/generate", json=body).json()["images"] == out["images"]
    assert client.post("/api/generate", json=body | {"seed": 4}).json()["images"][0] == out["images"][1]
    assert client.post("/api/generate", json=body | {"seed": 9}).json()["images"][0] != out["images"][0]
    assert set(out["timings"]) == {"queue_s", "generate_s"} and out["timings"]["generate_s"] > 0
    # a shapes model: the judge's verdict under each picture, or why there is none
    assert [type(v["correct"]) for v in out["verdicts"]] == [bool, bool] and all(v["text"] for v in out["verdicts"])
    other = client.post("/api/generate", json={"prompt": "a cat on a mat", "steps": 1}).json()
    assert other["verdicts"] == [{"correct": None, "text": NO_VERDICT}] and 0 <= other["seed"] < 2 ** 31


def test_negative_prompt_and_sampler_draw_as_the_api_does_and_every_png_keeps_its_settings(client, tiny_run):
    import json
    body = {"prompt": PROMPT, "seed": 5, "num": 2, "steps": 3, "negative_prompt": "blue", "sampler": "ddim"}
    out = client.post("/api/generate", json=body).json()
    expected = dreamlet.load(tiny_run / "model")(PROMPT, seed=5, num=2, steps=3, negative="blue", sampler="ddim")
    images = [decode(b64) for b64 in out["images"]]
    assert all((np.asarray(a) == np.asarray(b)).all() for a, b in zip(images, expected))
    assert out["settings"] == {"model": tiny_run.name, "family": "diffusion", "steps": 3, "guidance": 3.0,
                               "sampler": "ddim", "size": 32, "negative_prompt": "blue"}  # a name, not a path
    settings = json.loads(images[1].text["dreamlet"])
    assert settings["seed"] == 6 and settings["prompt"] == PROMPT and settings["negative_prompt"] == "blue"


def test_verdict_is_the_judges_on_a_real_picture():
    rng = np.random.default_rng(1)
    scene = random_pair(rng)
    image = Image.fromarray(render(scene, 32))
    assert verdict(image, canonical_caption(scene)) | {"found": None} == {
        "correct": True, "text": "correct", "found": None, "kind": "pair"}
    wrong = Image.fromarray(render(Scene((place(rng, "blue", "square", "large", "center"),)), 32))
    result = verdict(wrong, "a large green square at the center")
    assert result["correct"] is False and result["text"] == "wrong: color"
    assert verdict(wrong, "a blue square somewhere")["text"] == NO_VERDICT


@pytest.mark.parametrize("body, words", [
    ({}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": "   "}, "prompt"), ({"prompt": "x" * 10_000}, "10000 characters"),
    ({"prompt": 5}, "prompt"), ({"prompt": PROMPT, "steps": 0}, "steps"), ({"prompt": PROMPT, "steps": 10_000}, "steps"),
    ({"prompt": PROMPT, "num": 0}, "num"), ({"prompt": PROMPT, "num": 1000}, "num"), ({"prompt": PROMPT, "num": 2.5}, "num"),
    ({"prompt": PROMPT, "steps": "20"}, "steps"), ({"prompt": PROMPT, "seed": -1}, "seed"),
    ({"prompt": PROMPT, "seed": True}, "seed"), ({"prompt": PROMPT, "guidance": "high"}, "guidance"),
    ({"prompt": PROMPT, "guidance": 1e9}, "guidance"), ({"prompt": PROMPT, "model": 7}, "model"),
    ({"prompt": PROMPT, "model": "nope"}, "model"), ({"prompt": PROMPT, "stepz": 3}, "stepz"),
    ({"prompt": PROMPT, "sampler": "euler"}, "sampler"), ({"prompt": PROMPT, "negative_prompt": 3}, "negative_prompt"),
    ({"prompt": PROMPT, "negative_prompt": "x" * 10_000}, "negative_prompt"),
    ([PROMPT], "JSON object"), ("a red circle", "JSON object"),
])
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(client, body, words):
    r = client.post("/api/generate", json=body)
    assert 400 <= r.status_code < 500 and words in r.json()["error"], (r.status_code, r.text)


@pytest.mark.parametrize("content", [b"not json", b"", b"{\"prompt\": ", b"\xff\xfe"])
def test_a_body_that_is_not_json_gets_400(client, content):
    r = client.post("/api/generate", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]


def test_models_page_and_run_view(client, tiny_run):
    [model] = client.get("/api/models").json()["models"]
    assert model == {"index": 0, "name": tiny_run.name, "family": "diffusion", "size": 32, "data": "shapes",
                     "path": str(tiny_run / "model")}
    page = client.get("/")
    assert page.status_code == 200 and "Generate" in page.text and "/api/generate" in page.text
    assert "http" not in page.text.replace("http://www.w3.org/2000/svg", "")  # nothing fetched from elsewhere
    view = client.get("/api/runs/0").json()
    assert view["latest"]["step"] == 6 and view["done"] and view["grid_step"] is None
    assert view["log"]["step"][-1] == 6 and len(view["log"]["loss"]) == view["rows"] > 0
    assert {"step", "loss", "lr", "images_per_s", "elapsed_s"} <= set(view["log"])
    r = client.get("/api/runs/0/grid")
    assert r.status_code == 404 and "no progress grid" in r.json()["error"]
    assert client.get("/api/runs/5").status_code == 404 and "no run 5" in client.get("/api/runs/5").json()["error"]


def test_run_view_follows_a_run_being_written(tiny_run, tmp_path):
    run = tmp_path / "run"
    (run / "progress").mkdir(parents=True)
    log = (tiny_run / "train_log.csv").read_text()
    (run / "train_log.csv").write_text(log + "700,0.12")  # a half-written last line, as while training runs
    for step, colour in ((100, (255, 0, 0)), (200, (0, 0, 255))):
        Image.new("RGB", (8, 8), colour).save(run / "progress" / f"step_{step:06d}.png")
    with TestClient(create_app([], [run])) as c:
        view = c.get("/api/runs/0").json()
        assert view["latest"]["step"] == 6 and not view["done"] and view["grid_step"] == 200 and view["age_s"] >= 0
        grid = Image.open(io.BytesIO(c.get("/api/runs/0/grid").content))
        assert grid.getpixel((0, 0)) == (0, 0, 255)  # the latest grid
        assert "no model" in c.post("/api/generate", json={"prompt": PROMPT}).json()["error"]


def test_a_full_queue_answers_429_and_a_long_wait_503(tiny_run, monkeypatch):
    started, release = threading.Event(), threading.Event()
    draw = Pipeline.__call__

    def blocked(self, *args, **kwargs):  # the worker holds here until the test lets it go
        started.set()
        assert release.wait(30)
        return draw(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "__call__", blocked)
    body = {"prompt": PROMPT, "steps": 1}
    for queue, timeout, status, words in ((0, 60, 429, "busy"), (1, 0.2, 503, "waited 0.2 s")):
        started.clear(), release.clear()
        with TestClient(create_app([tiny_run / "model"], limits=Limits(queue=queue, timeout_s=timeout))) as c:
            first = []
            worker = threading.Thread(target=lambda: first.append(c.post("/api/generate", json=body)))
            worker.start()
            assert started.wait(30)
            began = time.perf_counter()
            r = c.post("/api/generate", json=body)
            assert r.status_code == status and words in r.json()["error"]
            assert time.perf_counter() - began < 10  # at once (429) or after the timeout (503), not after the draw
            release.set()
            worker.join(30)
            assert first[0].status_code == 200
            assert c.post("/api/generate", json=body).status_code == 200  # and it still serves


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    for argv, words in ((["serve", "--model", str(tmp_path / "missing")], "model directory not found"),
                        (["serve"], "--model"), (["serve", "--run", str(tmp_path / "nope")], "run directory not found")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the serve extra were not installed
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert 'pip install "dreamlet[serve]"' in capsys.readouterr().err


# ----------------------------------------------------------------------------- the page in a browser

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_run(run: Path, steps: int = 40) -> None:
    """A run directory as `dreamlet train` leaves it halfway: a falling loss in its log, a progress grid."""
    (run / "progress").mkdir(parents=True)
    rows = [f"{s},{1 / (1 + s / 10):.5f},0.0004,150.0,{s / 15:.1f}" for s in range(20, 20 * steps + 1, 20)]
    (run / "train_log.csv").write_text("step,loss,lr,images_per_s,elapsed_s\n" + "\n".join(rows) + "\n")
    Image.fromarray(render(random_pair(np.random.default_rng(0)), 64)).save(run / "progress" / "step_000400.png")


@pytest.fixture
def server(tiny_run, tmp_path):
    """`dreamlet serve` in a subprocess, as a user starts it. DREAMLET_SERVE_MODELS (paths joined by os.pathsep)
    and DREAMLET_SERVE_RUN serve other models and another run, e.g. to make the README's screenshot."""
    models = os.environ.get("DREAMLET_SERVE_MODELS", str(tiny_run / "model")).split(os.pathsep)
    run = os.environ.get("DREAMLET_SERVE_RUN")
    if not run:
        write_run(tmp_path / "run")
        run = tmp_path / "run"
    port = free_port()
    args = [a for m in models for a in ("--model", m)] + ["--run", str(run), "--port", str(port)]
    process = subprocess.Popen([sys.executable, "-m", "dreamlet", "serve", *args], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if process.poll() is not None:
                pytest.fail(f"dreamlet serve exited: {process.stderr.read()}")
            try:
                urllib.request.urlopen(f"{url}/api/models", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield url, len(models)
    finally:
        process.terminate()
        process.wait(10)


def test_the_page_draws_in_a_browser(server, tmp_path):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    url, columns = server
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        browser.get(url)
        WebDriverWait(browser, 30).until(lambda b: "px" in b.find_element(By.ID, "models").text)
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys(PROMPT)
        steps = "" if "DREAMLET_SERVE_MODELS" in os.environ else "4"  # real models draw with their own steps
        for field, value in (("seed", "7"), ("num", "3"), ("steps", steps)):
            browser.find_element(By.ID, field).clear()
            browser.find_element(By.ID, field).send_keys(value)
        browser.find_element(By.ID, "generate").click()
        decoded = ("return [...document.querySelectorAll('img.result')]"
                   ".filter(i => i.complete && i.naturalWidth > 0).map(i => i.naturalWidth)")
        WebDriverWait(browser, 120).until(lambda b: len(b.execute_script(decoded)) == 3 * columns)
        assert set(browser.execute_script(decoded)) <= {16, 32, 64, 128}
        assert len(browser.find_elements(By.CSS_SELECTOR, "#gallery .col")) == columns
        verdicts = [v.text for v in browser.find_elements(By.CSS_SELECTOR, ".verdict")]
        assert len(verdicts) == 3 * columns and all(v == "correct" or v.startswith("wrong") for v in verdicts)
        links = browser.find_elements(By.CSS_SELECTOR, "figcaption a[download]")
        assert [a.text for a in links[:3]] == ["seed 7 ⤓", "seed 8 ⤓", "seed 9 ⤓"]
        # the training view: the loss curve drawn from the run's log, the latest sample grid
        points = "return document.querySelector('#runs svg polyline')?.getAttribute('points').split(' ').length"
        WebDriverWait(browser, 30).until(lambda b: (b.execute_script(points) or 0) > 1)
        WebDriverWait(browser, 30).until(lambda b: b.execute_script(
            "const g = document.querySelector('#runs img.grid'); return g.complete && g.naturalWidth > 0"))
        assert "images/s" in browser.find_element(By.ID, "runs").text
        shot = Path(os.environ.get("DREAMLET_SERVE_SCREENSHOT", tmp_path / "serve.png"))
        browser.set_window_size(1200, max(900, browser.execute_script("return document.body.scrollHeight") + 140))
        assert browser.save_screenshot(str(shot))
        assert Image.open(shot).size[0] > 500
    finally:
        browser.quit()
