"""`dreamlet serve` under load: N clients POST /api/generate at the same moment, against the server as a user
starts it, once with the default limits and once with a long queue and a short timeout. Every answer must be
a 200 with its pictures or a clean 429 (queue full) / 503 (waited too long), and the server must still answer
afterwards. Writes latency percentiles, status counts and throughput into docs/benchmarks.md.

    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_load.py [--model DIR] [--requests 50]

Without --model it trains the default diffusion model for 20 steps into runs/bench/serve_load: a picture
costs what it costs with a fully trained one, and the server and its limits are what is measured here.
"""
import argparse
import base64
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from docs_section import keep_results, write_section  # noqa: E402
from time_to_accuracy import machine  # noqa: E402

PROMPT = "a large red circle at the top left"


def post(url: str, body: dict, timeout: float = 300) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/api/generate", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def check(status: int, answer: dict, num: int) -> str | None:
    """What is wrong with one answer, or None."""
    if status == 200:
        images = [Image.open(io.BytesIO(base64.b64decode(b64))) for b64 in answer.get("images", [])]
        if len(images) != num or any(im.size[0] < 8 for im in images):
            return f"200 without {num} pictures"
        return None
    if status in (429, 503) and answer.get("error"):
        return None
    return f"{status}: {answer}"


def start_server(model: str, queue: int, timeout: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "dreamlet", "serve", "--model", model, "--port", str(port),
                                "--queue", str(queue), "--timeout", str(timeout)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if process.poll() is not None:
            sys.exit(f"dreamlet serve exited with {process.returncode}")
        try:
            urllib.request.urlopen(f"{url}/api/models", timeout=1)
            return process, url
        except OSError:
            time.sleep(0.1)
    sys.exit("dreamlet serve did not start in 2 minutes")


def storm(url: str, requests: int, body: dict) -> dict:
    """`requests` clients, released together by a barrier; each records its status, latency and any problem."""
    results, barrier = [None] * requests, threading.Barrier(requests)

    def client(i):
        barrier.wait()
        began = time.perf_counter()
        status, answer = post(url, body)
        results[i] = (status, time.perf_counter() - began, check(status, answer, body["num"]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(requests)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    problems = [p for _, _, p in results if p]
    if problems:
        sys.exit(f"{len(problems)} bad answers, e.g. {problems[0]}")
    status, answer = post(url, body)  # the server still draws after the storm
    if status != 200 or check(status, answer, body["num"]):
        sys.exit(f"after the load the server answered {status}: {answer}")
    return dict(results=results, wall=wall)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a model directory (default: the default model, trained 20 steps here)")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--num", type=int, default=1, help="pictures per request")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps per picture")
    parser.add_argument("--note", default="", help="a sentence for the report, e.g. what else ran on the machine")
    args = parser.parse_args()
    model = args.model
    if not model:
        run = ROOT / "runs" / "bench" / "serve_load"
        if not (run / "model" / "config.json").is_file():
            from dreamlet.training import TrainConfig, train
            train(TrainConfig(out=str(run), steps=20, sample_every=0, checkpoint_every=0), quiet=True)
        model = str(run / "model")
    body = {"prompt": PROMPT, "num": args.num, "steps": args.steps, "seed": 0}
    rows, per_picture, measured = [], [], []
    for label, queue, timeout in (("defaults: --queue 8 --timeout 60", 8, 60.0),
                                  ("--queue 64 --timeout 2", 64, 2.0)):
        process, url = start_server(model, queue, timeout)
        try:
            outcome = storm(url, args.requests, body)
        finally:
            process.terminate()
            process.wait(30)
        results = outcome["results"]
        counts = {code: sum(s == code for s, _, _ in results) for code in (200, 429, 503)}
        every = np.array([t for _, t, _ in results])
        ok = np.array([t for s, t, _ in results if s == 200])
        per_picture.append(outcome["wall"] / max(counts[200] * args.num, 1))
        pictures_per_s = counts[200] * args.num / outcome["wall"]
        pct = lambda a: " / ".join(f"{np.percentile(a, q):.2f}" for q in (50, 90, 99)) if len(a) else "-"  # noqa: E731
        rows.append(f"| {label} | {counts[200]} / {counts[429]} / {counts[503]} | {pct(ok)} | {pct(every)} "
                    f"| {pictures_per_s:.1f} | {outcome['wall']:.1f} |")
        print(rows[-1], flush=True)
        measured.append(dict(limits=label, answers=counts, seconds_200=ok.tolist(), seconds_all=every.tolist(),
                             pictures_per_s=pictures_per_s, wall_s=outcome["wall"]))

    size = json.loads((Path(model) / "config.json").read_text())
    what = f"{size['family']}, preset {size['train'].get('preset') or 'default'}, {size['size']} px"
    argv = sys.argv[1:]
    if "--note" in argv:  # the note is printed below the command, not inside it
        del argv[argv.index("--note"):argv.index("--note") + 2]
    command = " ".join(["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "(unset)"), ".venv/bin/python",
                        "bench/serve_load.py"] + [shlex.quote(a) for a in argv])
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}.", f"Command: `{command}`",
             f"{args.requests} clients send `POST /api/generate` at the same moment ({args.num} picture(s), {args.steps} "
             f"steps, model: {what}) to `dreamlet serve` started as a user starts it; one worker draws. Every answer "
             "was a 200 with its pictures or a clean 429 / 503 with an error message, and the server drew again "
             f"afterwards. Latency in seconds, as each client saw it; one picture took about {min(per_picture):.2f} s. "
             f"{args.note}".strip(), "",
             "| limits | 200 / 429 / 503 | p50 / p90 / p99 of 200s | p50 / p90 / p99 of all | pictures/s | wall s |",
             "|---|---|---|---|---|---|", *rows]
    keep_results("serve_load", command, measured, note=args.note, model=what)
    lines[1] += " Raw results: bench/results/serve_load.json."
    write_section("serve_load", "The web API under load (dreamlet serve)", "\n".join(lines))


if __name__ == "__main__":
    main()
