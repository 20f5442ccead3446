"""The screenshots of `dreamlet serve` in the README and docs/serve.md, taken from the real page in headless
Chromium (Debian's chromium and chromium-driver, as the browser test uses) with real trained models:

    python bench/serve_screenshots.py --model runs/bench/real/latent-diffusion-emoji-64px-30min/model \
        --model runs/bench/real/diffusion-emoji-32px-30min/model --run runs/bench/real/latent-diffusion-emoji-64px-30min \
        --prompt "teacher medium-light skin tone" --inpaint "Mrs. Claus medium skin tone"

Writes docs/images/serve.png (every model side by side on one prompt, the run view), serve_viewer.png (a
picture full size with its settings) and serve_inpaint.png (the first model's first picture, its lower
half painted over and drawn again from another prompt).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_server(models: list[str], runs: list[str], out: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [a for m in models for a in ("--model", m)] + [a for r in runs for a in ("--run", r)]
    process = subprocess.Popen([sys.executable, "-m", "dreamlet", "serve", *args, "--port", str(port), "--out", str(out)],
                               env=os.environ | {"PYTHONPATH": str(ROOT / "src")})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{url}/api/models", timeout=1)
            return process, url
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("dreamlet serve did not start")


def chromium():
    from selenium import webdriver
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))


def draw(browser, prompt: str, seed: int, num: int, pictures: int, model_index: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    Select(browser.find_element(By.ID, "model")).select_by_index(model_index)  # 0: every model
    for field, value in (("prompt", prompt), ("seed", str(seed)), ("num", str(num))):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    before = browser.execute_script("return document.querySelectorAll('#gallery section').length")
    browser.find_element(By.ID, "generate").click()
    ready = ("return [...document.querySelector('#gallery section').querySelectorAll('img.result')]"
             ".filter(i => i.complete && i.naturalWidth > 0).length")
    WebDriverWait(browser, 600).until(lambda b: b.execute_script(
        "return document.querySelectorAll('#gallery section').length") > before and b.execute_script(ready) == pictures)


def shoot(browser, path: Path, height: int | None = None) -> None:
    browser.set_window_size(1280, height or max(1000, browser.execute_script("return document.body.scrollHeight") + 140))
    browser.save_screenshot(str(path))
    print("wrote", path.relative_to(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--run", action="append", default=[])
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--inpaint", required=True, help="the prompt that redraws the painted half")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--num", type=int, default=4)
    args = parser.parse_args()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    images = ROOT / "docs" / "images"
    with tempfile.TemporaryDirectory() as out:
        server, url = start_server(args.model, args.run, Path(out))
        browser = chromium()
        try:
            browser.get(url)
            WebDriverWait(browser, 60).until(lambda b: "px" in b.find_element(By.ID, "models").text)
            draw(browser, args.prompt, args.seed, args.num, args.num * len(args.model), 0)
            WebDriverWait(browser, 60).until(lambda b: b.execute_script(
                "const g = document.querySelector('#runs img.grid'); return !g || g.hidden || (g.complete && g.naturalWidth > 0)"))
            shoot(browser, images / "serve.png")
            browser.set_window_size(1280, 1000)
            browser.find_element(By.CSS_SELECTOR, "#gallery img.result").click()
            WebDriverWait(browser, 10).until(lambda b: b.execute_script("return document.querySelector('#viewer').open"))
            time.sleep(0.5)
            shoot(browser, images / "serve_viewer.png", 1000)
            browser.find_element(By.ID, "use-picture").click()
            canvas = browser.find_element(By.ID, "edit-canvas")
            browser.find_element(By.ID, "brush").clear()
            browser.find_element(By.ID, "brush").send_keys("40")
            chain = ActionChains(browser).move_to_element_with_offset(canvas, -110, 10).click_and_hold()
            for dy in (0, 40, 80):  # three strokes across the lower half
                chain = chain.move_to_element_with_offset(canvas, -110, 10 + dy).move_by_offset(220, 0)
            chain.release().perform()
            browser.execute_script("window.scrollTo(0, 0)")
            draw(browser, args.inpaint, args.seed, args.num, args.num, 1)
            browser.execute_script("window.scrollTo(0, 0)")
            shoot(browser, images / "serve_inpaint.png", 1000)
        finally:
            browser.quit()
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
