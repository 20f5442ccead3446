"""dreamlet serve: the JSON API (FastAPI's TestClient), its limits, the run view, the CLI's errors, and the page
itself in headless Chromium against the real server."""
import base64
import io
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
from dreamlet.serve import NO_VERDICT, Limits, create_app, tail_lines, verdict  # noqa: E402

PROMPT = "a large red circle at the top left"


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


LOCAL = "http://127.0.0.1"  # the server answers its own Host names only


@pytest.fixture(scope="module")
def client(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve")
    with TestClient(create_app([tiny_run / "model"], [tiny_run], Limits(max_images=4, max_steps=20), out=out),
                    base_url=LOCAL) as c:
        c.out = out
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
                               "guidance_detail": 0.5, "sampler": "ddim", "size": 32, "negative_prompt": "blue",
                               "candidates": 4, "chosen_by": "model"}  # a name, not a path
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


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def slow_client(tiny_run, tmp_path_factory):
    """A server that allows drawings long enough to watch and cancel (2,000 steps, 8 pictures)."""
    out = tmp_path_factory.mktemp("slow")
    with TestClient(create_app([tiny_run / "model"], limits=Limits(max_steps=2000), out=out), base_url=LOCAL) as c:
        c.out = out
        yield c


def wait_for(check, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_job_reports_its_progress_and_cancel_stops_it(slow_client):
    c = slow_client
    first = c.post("/api/jobs", json={"prompt": PROMPT, "steps": 2000, "num": 8})
    assert first.status_code == 202 and first.json()["state"] in ("queued", "drawing")
    job = first.json()["id"]
    queued = c.post("/api/jobs", json={"prompt": PROMPT, "steps": 3}).json()["id"]  # waits behind the first
    seen = [wait_for(lambda: (v := c.get(f"/api/jobs/{job}").json())["progress"] > 0 and v)["progress"]]
    seen.append(wait_for(lambda: (p := c.get(f"/api/jobs/{job}").json()["progress"]) > seen[0] and p))
    assert 0 < seen[0] < seen[1] < 1
    assert c.delete(f"/api/jobs/{queued}").json()["state"] == "cancelled"  # a queued job never starts
    assert c.delete(f"/api/jobs/{job}").status_code == 200
    stopped = wait_for(lambda: (v := c.get(f"/api/jobs/{job}").json())["state"] != "drawing" and v, 30)
    assert stopped["state"] == "cancelled" and stopped["progress"] < 1 and "result" not in stopped
    assert c.get(f"/api/jobs/{queued}").json()["state"] == "cancelled"
    assert c.get("/api/history").json()["history"] == []  # nothing drawn, nothing kept
    done = c.post("/api/generate", json={"prompt": PROMPT, "steps": 2, "seed": 1})  # and it draws again
    assert done.status_code == 200 and len(c.get("/api/history").json()["history"]) == 1
    assert c.get("/api/jobs/nope").status_code == 404


def test_every_drawing_is_kept_and_listed_newest_first_across_restarts(client, tiny_run):
    import json
    first = client.post("/api/generate", json={"prompt": PROMPT, "seed": 11, "num": 2, "steps": 2}).json()
    second = client.post("/api/generate", json={"prompt": "a small blue square at the center", "steps": 2}).json()
    with TestClient(create_app([tiny_run / "model"], out=client.out), base_url=LOCAL) as again:  # a restart
        history = again.get("/api/history").json()["history"]
        assert [h["prompt"] for h in history[:2]] == ["a small blue square at the center", PROMPT]
        assert history[1]["seeds"] == [11, 12] and history[1]["files"] == first["files"]
        assert history[1]["settings"] == first["settings"] and history[0]["files"] == second["files"]
        picture = again.get(f"/api/history/files/{first['files'][1]}")
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
        assert picture.content == base64.b64decode(first["images"][1])  # the same PNG, settings and all
        assert json.loads(Image.open(io.BytesIO(picture.content)).text["dreamlet"])["seed"] == 12
        for name in ("../" + first["files"][0], "history.jsonl", "%2e%2e/x.png", "nope.png"):
            assert again.get(f"/api/history/files/{name}").status_code == 404


def test_the_history_page_reads_only_the_end_of_a_long_history(tmp_path):
    path = tmp_path / "history.jsonl"
    lines = [f'{{"id": {k}, "prompt": "{"x" * (k % 300)}"}}' for k in range(5000)]  # lines longer and shorter than a block
    path.write_text("\n".join(lines) + "\n")
    for count in (1, 7, 50, 4999, 5000, 6000):
        assert tail_lines(path, count, block=256) == lines[-count:]
    assert tail_lines(path, 0) == []
    path.write_text("")
    assert tail_lines(path, 5) == []


def test_image_to_image_and_inpainting_over_http_draw_as_the_api_does(client, tiny_run, tmp_path):
    import dreamlet.sample
    rng = np.random.default_rng(0)
    start = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))  # wide: made square as trained
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (0, 0, 32, 48))  # the left half is drawn, the right half kept
    body = {"prompt": PROMPT, "seed": 2, "steps": 3, "init_image": png_base64(start), "mask_image": png_base64(mask)}
    out = client.post("/api/generate", json=body)
    assert out.status_code == 200, out.text
    drawn = np.asarray(decode(out.json()["images"][0]))
    expected = dreamlet.load(tiny_run / "model")(PROMPT, seed=2, steps=3, image=start, mask_image=mask)
    assert (drawn == np.asarray(expected[0])).all()
    from dreamlet.pipeline import read_picture
    square, kept = read_picture(start, 32, "crop"), ~read_picture(mask, 32, "crop", mask=True)
    assert kept.any() and (drawn[kept] == square[kept]).all()  # every pixel outside the mask exactly as given
    # the PNG names the pictures it started from, kept beside it: --from-png draws it again, bit for bit
    served = client.out / out.json()["files"][0]
    again = dreamlet.sample.sample_again(served, tmp_path / "again", model_dir=tiny_run / "model")
    assert (np.asarray(Image.open(tmp_path / "again" / again[0]["file"])) == drawn).all()
    same = client.post("/api/generate", json=body | {"strength": 0, "mask_image": None}).json()
    assert (np.asarray(decode(same["images"][0])) == square).all()  # strength 0: the picture as it is
    for bad, words in (({"init_image": "bm90IGEgcGljdHVyZQ=="}, "init_image: not a base64"),
                       ({"init_image": "%%%"}, "init_image"), ({"mask_image": png_base64(mask)}, "give init_image"),
                       ({"init_image": png_base64(start), "strength": 1.5}, "strength")):
        r = client.post("/api/generate", json={"prompt": PROMPT, "steps": 1} | bad)
        assert r.status_code == 400 and words in r.json()["error"], r.text


def test_what_a_web_page_elsewhere_could_abuse_is_refused(client, tiny_run, tmp_path):
    body = {"prompt": PROMPT, "steps": 1}
    evil = client.post("/api/generate", json=body, headers={"Host": "attacker.example"})  # DNS rebinding
    assert evil.status_code == 421 and "Host" in evil.json()["error"]
    assert client.get("/api/models", headers={"Host": "attacker.example:7860"}).status_code == 421
    assert client.get("/api/models", headers={"Host": "localhost:7860"}).status_code == 200
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None):
        r = client.post("/api/generate", content=b'{"prompt": "a red circle"}',
                        headers={"Content-Type": kind} if kind else {})
        assert r.status_code == 415 and "application/json" in r.json()["error"], kind  # a cross-site "simple" POST
    with TestClient(create_app([tiny_run / "model"], limits=Limits(max_body_bytes=1000), out=tmp_path),
                    base_url=LOCAL) as small:
        big = {"prompt": PROMPT, "negative_prompt": "x" * 2000}
        assert small.post("/api/generate", json=big).status_code == 413
        chunks = (b'{"prompt": "' + b"x" * 500 for _ in range(10))  # no Content-Length: counted as it comes
        r = small.post("/api/generate", content=chunks, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "1000 bytes" in r.json()["error"]
        assert small.post("/api/generate", json=body).status_code == 200
    texts = [client.get(path).text for path in ("/api/models", "/api/runs", "/api/runs/0", "/api/history")]
    assert not any(str(tiny_run) in t or str(tmp_path) in t or str(client.out) in t for t in texts)  # no paths


def test_a_token_keeps_everyone_else_out(tiny_run, tmp_path):
    with TestClient(create_app([tiny_run / "model"], out=tmp_path, hosts=None, token="s3cret"),
                    base_url="http://192.168.1.5") as c:
        assert c.get("/api/models").status_code == 401 and "token" in c.get("/api/models").json()["error"]
        assert c.get("/").status_code == 401
        assert c.get("/api/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        page = c.get("/?token=s3cret", follow_redirects=False)  # the page's way: a cookie, then the URL without it
        assert page.status_code == 303 and "HttpOnly" in page.headers["set-cookie"]
        c.cookies.set("dreamlet_token", "s3cret")
        assert c.get("/").status_code == 200 and c.post("/api/generate", json={"prompt": PROMPT, "steps": 1}).is_success
    with TestClient(create_app([tiny_run / "model"], out=tmp_path, hosts=None, token="a+b/c="),
                    base_url="http://192.168.1.5") as c:  # a token as `secrets.token_urlsafe` or base64 spells it
        assert c.get("/?token=a%2Bb%2Fc%3D", follow_redirects=False).status_code == 303


def test_the_openapi_page_comes_from_the_typed_request_and_from_this_machine(client):
    schema = client.get("/openapi.json").json()
    fields = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert {"prompt", "negative_prompt", "init_image", "mask_image", "strength", "sampler"} <= set(fields)
    assert fields["sampler"]["anyOf"][0]["enum"] == ["dpmpp_2m", "ddim"]
    assert {"/api/generate", "/api/jobs", "/api/jobs/{job_id}", "/api/history"} <= set(schema["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-files/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text
    assert client.get("/docs-files/swagger-ui-bundle.js").status_code == 200


def test_models_page_and_run_view(client, tiny_run):
    [model] = client.get("/api/models").json()["models"]
    assert model == {"index": 0, "name": tiny_run.name, "family": "diffusion", "size": 32, "data": "shapes",
                     "edits": True, "negative": True}  # a name, never a path
    page = client.get("/")
    assert page.status_code == 200 and "Generate" in page.text and "/api/jobs" in page.text
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
    with TestClient(create_app([], [run], out=tmp_path / "out"), base_url=LOCAL) as c:
        view = c.get("/api/runs/0").json()
        assert view["latest"]["step"] == 6 and not view["done"] and view["grid_step"] == 200 and view["age_s"] >= 0
        grid = Image.open(io.BytesIO(c.get("/api/runs/0/grid").content))
        assert grid.getpixel((0, 0)) == (0, 0, 255)  # the latest grid
        assert "no model" in c.post("/api/generate", json={"prompt": PROMPT}).json()["error"]


def test_a_full_queue_answers_429_and_a_long_wait_503(tiny_run, monkeypatch, tmp_path):
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
        with TestClient(create_app([tiny_run / "model"], limits=Limits(queue=queue, timeout_s=timeout),
                                   out=tmp_path / "out"), base_url=LOCAL) as c:
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
                        (["serve"], "--model"), (["serve", "--run", str(tmp_path / "nope")], "run directory not found"),
                        (["serve", "--model", str(tmp_path), "--host", "0.0.0.0"], "--token"),
                        (["serve", "--model", str(tmp_path), "--max-body-bytes", "0"], "--max-body-bytes")):
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
    """`dreamlet serve` in a subprocess, as a user starts it (bench/serve_screenshots.py does the same with
    real models for the docs' screenshots)."""
    models = [str(tiny_run / "model")]
    write_run(tmp_path / "run")
    run = tmp_path / "run"
    port = free_port()
    args = [a for m in models for a in ("--model", m)] + ["--run", str(run), "--port", str(port),
                                                          "--out", str(tmp_path / "serve"), "--max-steps", "2000"]
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


@pytest.fixture
def browser():
    """Headless Chromium driven by Selenium (Debian's chromium and chromium-driver, which `make test` installs)."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_draws_in_a_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    url, columns = server
    browser.get(url)
    WebDriverWait(browser, 30).until(lambda b: "px" in b.find_element(By.ID, "models").text)
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys(PROMPT)
    for field, value in (("seed", "7"), ("num", "3"), ("steps", "4")):
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
    shot = tmp_path / "serve.png"
    browser.set_window_size(1200, max(900, browser.execute_script("return document.body.scrollHeight") + 140))
    assert browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 500


def test_the_page_shows_progress_cancels_inpaints_and_keeps_its_history(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    url, _ = server
    browser.get(url)
    WebDriverWait(browser, 30).until(lambda b: "px" in b.find_element(By.ID, "models").text)
    Select(browser.find_element(By.ID, "model")).select_by_index(1)  # the first model alone
    find = lambda id: browser.find_element(By.ID, id)  # noqa: E731

    def fill(**fields):
        for field, value in fields.items():
            find(field).clear()
            find(field).send_keys(value)
    # a long drawing: the bar advances, and Cancel stops it
    fill(prompt=PROMPT, steps="2000", num="8", seed="1")
    find("generate").click()
    progress = lambda b: float(b.execute_script("return document.querySelector('#progress').value"))  # noqa: E731
    first = WebDriverWait(browser, 60, 0.05).until(lambda b: progress(b) > 0 and progress(b))
    WebDriverWait(browser, 60, 0.05).until(lambda b: progress(b) > first)
    assert "drawing" in find("status").text and find("generate").get_attribute("disabled")
    find("cancel").click()
    WebDriverWait(browser, 60).until(lambda b: find("status").text == "cancelled")
    assert progress(browser) < 1 and not find("generate").get_attribute("disabled")
    # inpainting: an uploaded picture, a mask painted with the pointer
    picture = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(picture)
    find("init-file").send_keys(str(picture))
    canvas = WebDriverWait(browser, 30).until(lambda b: find("edit-canvas").is_displayed() and find("edit-canvas"))
    ActionChains(browser).move_to_element_with_offset(canvas, -60, -60).click_and_hold() \
        .move_by_offset(60, 60).move_by_offset(40, 0).release().perform()
    assert browser.execute_script("return edit.painted")
    fill(prompt="a small green triangle at the bottom right", steps="4", num="2", seed="5")
    find("generate").click()
    drawn = ("return [...document.querySelectorAll('#gallery section')].filter(s => s.textContent.includes('inpainting'))"
             ".flatMap(s => [...s.querySelectorAll('img.result')]).filter(i => i.complete && i.naturalWidth > 0).length")
    WebDriverWait(browser, 120).until(lambda b: b.execute_script(drawn) == 2)
    # the full-size viewer
    browser.find_element(By.CSS_SELECTOR, "#gallery img.result").click()
    WebDriverWait(browser, 10).until(lambda b: b.execute_script("return document.querySelector('#viewer').open"))
    assert "seed 5" in browser.find_element(By.CSS_SELECTOR, "#viewer .meta").text
    assert '"strength": 1' in browser.find_element(By.CSS_SELECTOR, "#viewer pre").text
    find("close-viewer").click()
    # a reload: the drawing is still there, from the server's history (the cancelled one is not)
    browser.refresh()
    past = ("return [...document.querySelectorAll('#gallery section.past')].map(s => [s.querySelector('h3').textContent,"
            " [...s.querySelectorAll('img.result')].filter(i => i.complete && i.naturalWidth > 0).length])")
    WebDriverWait(browser, 30).until(lambda b: b.execute_script(past) == [["a small green triangle at the bottom right", 2]])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's memory from /proc")
def test_under_load_every_request_is_answered_and_memory_stays_flat(tiny_run, tmp_path):
    """200 requests, 50 at a time, a quarter of them malformed or oversized, against `dreamlet serve` as a user
    starts it: every one gets 200, 4xx, 429 or 503, and the server's memory after a second round is what it
    was after the first (the bodies are refused before they are read whole)."""
    import json
    from concurrent.futures import ThreadPoolExecutor
    import urllib.error
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "dreamlet", "serve", "--model", str(tiny_run / "model"),
                                "--port", str(port), "--out", str(tmp_path / "out"), "--queue", "20",
                                "--timeout", "20", "--max-body-bytes", "100000"], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/api/generate"
    good = json.dumps({"prompt": PROMPT, "steps": 1}).encode()
    bodies = [(good, "application/json"), (b'{"prompt": ', "application/json"), (good, "text/plain"),
              (b'{"prompt": "' + b"x" * 200_000 + b'"}', "application/json"), (good, "application/json"),
              (json.dumps({"prompt": PROMPT, "steps": -3}).encode(), "application/json"),
              (good, "application/json"), (good, "application/json")]  # 3 of 8 refused, 5 drawn or turned away

    def send(i: int) -> int:
        body, kind = bodies[i % len(bodies)]
        request = urllib.request.Request(url, body, {"Content-Type": kind})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status
        except urllib.error.HTTPError as error:
            assert "error" in json.loads(error.read()), i
            return error.code
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        rounds = []
        for _ in range(2):
            with ThreadPoolExecutor(50) as pool:
                statuses = list(pool.map(send, range(100)))
            rounds.append((statuses, rss_kib(process.pid)))
        for statuses, _ in rounds:
            assert set(statuses) <= {200, 400, 413, 415, 429, 503}, sorted(set(statuses))
            assert statuses.count(200) >= 10 and {400, 413, 415} <= set(statuses)
        assert rounds[1][1] < rounds[0][1] * 1.15 + 20_000, [r[1] for r in rounds]  # flat: within 15 % + 20 MiB
        with urllib.request.urlopen(urllib.request.Request(url, good, {"Content-Type": "application/json"})) as r:
            assert r.status == 200  # and it still draws
    finally:
        process.terminate()
        process.wait(10)
