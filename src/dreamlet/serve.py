"""`dreamlet serve`: a local web page and JSON API to draw from trained models and watch runs train.

One worker thread draws, so a model is never called from two threads at once and the event loop keeps
answering (the page, the run view, 429s) while it works. Requests beyond the worker wait in a bounded
queue: when it is full the answer is 429 at once, and a request that waited longer than its timeout
without starting gets 503, so a busy server says so instead of piling up work nobody waits for.
"""

import asyncio
import base64
import csv
import io
import json
import math
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from .checkpoint import UserError

NO_VERDICT = "no verdict (not a canonical shapes prompt)"
SAMPLERS = ("dpmpp_2m", "ddim")
MAX_SEED = 2 ** 31 - 1
MAX_LOG_POINTS = 2000  # the run view's loss curve keeps every k-th row beyond this


@dataclass
class Limits:
    max_images: int = 8           # pictures per request
    max_steps: int = 100          # sampler steps per picture
    max_prompt_chars: int = 500
    queue: int = 8                # requests that may wait while one draws; more get 429
    timeout_s: float = 60.0       # a request not started after this long gets 503


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def model_name(path: Path) -> str:
    """runs/demo/model -> "demo" (every model directory is called model, its run is what tells them apart)."""
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def describe(index: int, pipeline) -> dict:
    path = Path(pipeline.path or f"model{index}")
    return dict(index=index, name=model_name(path), family=pipeline.family, size=pipeline.image_size,
                data=pipeline.meta.get("data", "?"), path=str(path))


def parse_request(body, limits: Limits, models: list[dict]) -> dict:
    """The checked fields of a generate request, or BadRequest saying what is wrong with it."""
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object such as {"prompt": "a red circle"}')
    unknown = set(body) - {"prompt", "negative_prompt", "seed", "steps", "guidance", "sampler", "num", "model"}
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("prompt: give some text to draw")
    if len(prompt) > limits.max_prompt_chars:
        raise BadRequest(f"prompt: {len(prompt)} characters, at most {limits.max_prompt_chars}")
    negative = body.get("negative_prompt") or ""
    if not isinstance(negative, str) or len(negative) > limits.max_prompt_chars:
        raise BadRequest(f"negative_prompt: text of at most {limits.max_prompt_chars} characters")
    sampler = body.get("sampler")
    if sampler is not None and sampler not in SAMPLERS:
        raise BadRequest(f"sampler: one of {', '.join(SAMPLERS)}, not {sampler!r}")

    def number(name, low, high, kinds=(int,)):
        value = body.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise BadRequest(f"{name} must be {'an integer' if kinds == (int,) else 'a number'}, not {value!r}")
        if not low <= value <= high:
            raise BadRequest(f"{name} must be between {low} and {high}, not {value}")
        return value

    choice = body.get("model", 0)
    matches = [m for m in models if not isinstance(choice, bool) and choice in (m["index"], m["name"], m["path"])]
    if not matches:
        raise BadRequest(f"model: no model {choice!r}; loaded: {', '.join(m['name'] for m in models) or 'none'}")
    seed = number("seed", 0, MAX_SEED)
    return dict(prompt=prompt, negative=negative, model=matches[0]["index"],
                seed=secrets.randbelow(MAX_SEED) if seed is None else seed, sampler=sampler,
                steps=number("steps", 1, limits.max_steps), guidance=number("guidance", 0, 50, (int, float)),
                num=number("num", 1, limits.max_images) or 1)


def png_base64(image, settings: dict | None = None) -> str:
    """A picture as base64 PNG, with the settings that drew it in its "dreamlet" text chunk (as `sample` writes)."""
    from PIL.PngImagePlugin import PngInfo
    from .sample import PNG_KEY
    info = PngInfo()
    if settings is not None:
        info.add_text(PNG_KEY, json.dumps(settings))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def verdict(image, prompt: str) -> dict:
    """The shapes judge on one picture, with a line a person reads under it."""
    import numpy as np
    from .data.shapes import parse_prompt
    from .judge import judge
    wanted = parse_prompt(prompt)
    if wanted is None:
        return dict(correct=None, text=NO_VERDICT)
    scores = judge(np.asarray(image.convert("RGB")), wanted)
    wrong = [k for k in ("color", "shape", "size", "position", "relation") if scores.get(k) is False]
    if scores["correct"]:
        text = "correct"
    else:  # nothing wrong in itself: a single prompt's object is not alone
        text = "wrong: " + (", ".join(wrong) if wrong else "extra objects")
    return dict(correct=bool(scores["correct"]), text=text, found=scores["found"], kind=wanted.kind)


def read_run(run: Path) -> dict:
    """A run directory as the page draws it: its log as columns, the latest grid's step, whether it is done."""
    log, rows = run / "train_log.csv", []
    if log.is_file():
        with open(log, newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                try:  # the last line may be half written while `dreamlet train` runs: skip it
                    values = {k: float(row[k]) for k in reader.fieldnames}
                except (TypeError, ValueError):
                    continue
                rows.append({k: v if math.isfinite(v) else None for k, v in values.items()})  # JSON has no nan
    if len(rows) > MAX_LOG_POINTS:
        rows = rows[:-1:math.ceil(len(rows) / MAX_LOG_POINTS)] + rows[-1:]
    grids = sorted((run / "progress").glob("step_*.png"))
    columns = list(rows[0]) if rows else []
    return dict(path=str(run), rows=len(rows), log={k: [r[k] for r in rows] for k in columns},
                latest=rows[-1] if rows else None, grid_step=int(grids[-1].stem[5:]) if grids else None,
                done=(run / "model" / "config.json").is_file(),
                age_s=round(time.time() - log.stat().st_mtime, 1) if log.is_file() else None)


def create_app(models: list, runs: list = (), limits: Limits | None = None):
    """The FastAPI app over loaded pipelines (or model directories) and run directories."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse
    from starlette.exceptions import HTTPException
    from .pipeline import Pipeline

    limits = limits or Limits()
    pipelines = [m if isinstance(m, Pipeline) else Pipeline.load(m) for m in models]
    infos = [describe(i, p) for i, p in enumerate(pipelines)]
    page = files("dreamlet").joinpath("static/index.html").read_text()
    app = FastAPI(title="dreamlet", docs_url=None, redoc_url=None)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):  # 404s and 405s in the same {"error"} shape as the rest
        return error(str(exc.detail), exc.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/api/models")
    async def list_models():
        return {"models": infos, "limits": limits.__dict__}

    add_generate(app, pipelines, infos, limits)
    add_runs(app, [Path(r) for r in runs])
    return app


def error(message: str, status: int):
    """An answer in the API's error shape, {"error": message}."""
    from fastapi.responses import JSONResponse
    return JSONResponse({"error": message}, status_code=status)


def draw(pipeline, info: dict, job: dict, queued: float) -> dict:
    """A checked generate request's answer: the pictures as PNG, their seeds, shapes verdicts, timings."""
    from . import __version__
    started = time.perf_counter()
    images = pipeline(job["prompt"], seed=job["seed"], num=job["num"], steps=job["steps"], guidance=job["guidance"],
                      sampler=job["sampler"], negative=job["negative"])
    settings = images.settings | {"model": info["name"], "size": info["size"]}  # a name: no paths leave the server
    out = dict(images=[png_base64(im, {"prompt": job["prompt"], "seed": seed, "negative_prompt": job["negative"]}
                                  | settings | {"dreamlet": __version__}) for im, seed in zip(images, images.seeds)],
               seed=job["seed"], seeds=images.seeds, model=info["name"], size=info["size"],
               settings=settings | {"negative_prompt": job["negative"]})
    if info["data"] == "shapes":
        out["verdicts"] = [verdict(im, job["prompt"]) for im in images]
    out["timings"] = dict(queue_s=round(started - queued, 4), generate_s=round(time.perf_counter() - started, 4))
    return out


def add_generate(app, pipelines: list, infos: list[dict], limits: Limits) -> None:
    """POST /api/generate: one worker thread draws; a bounded queue waits for it (429 when full, 503 when
    a request waited longer than its timeout without starting)."""
    from fastapi import Request
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dreamlet-draw")
    state = dict(pending=0)  # requests admitted: the one drawing and those waiting

    @app.post("/api/generate")
    async def generate(request: Request):
        queued = time.perf_counter()
        try:
            job = parse_request(await request.json(), limits, infos)
        except BadRequest as bad:
            return error(str(bad), bad.status)
        except ValueError:  # json.JSONDecodeError and bad encodings
            return error('the body is not JSON; send {"prompt": "..."} with Content-Type: application/json', 400)
        if state["pending"] > limits.queue:
            return error(f"busy: {state['pending']} requests ahead and the queue holds {limits.queue}; "
                         "try again soon", 429)
        state["pending"] += 1
        try:
            future = worker.submit(draw, pipelines[job["model"]], infos[job["model"]], job, queued)
            waiting = asyncio.wrap_future(future)
            try:
                return await asyncio.wait_for(asyncio.shield(waiting), limits.timeout_s)
            except asyncio.TimeoutError:
                if future.cancel():  # still queued: give up on it; once drawing, it finishes
                    return error(f"busy: waited {limits.timeout_s:g} s without starting; try again later", 503)
                return await waiting
        except UserError as bad:  # e.g. a model family that does not draw
            return error(str(bad), 400)
        finally:
            state["pending"] -= 1


def add_runs(app, runs: list[Path]) -> None:
    """GET /api/runs, /api/runs/{index} (its log, read_run) and /api/runs/{index}/grid (its latest progress grid)."""
    from fastapi.responses import FileResponse
    from starlette.exceptions import HTTPException

    def get_run(index: int) -> Path:
        if not 0 <= index < len(runs):
            raise HTTPException(404, f"no run {index}; watching {len(runs)}")
        return runs[index]

    @app.get("/api/runs")
    async def list_runs():
        return {"runs": [dict(index=i, path=str(r)) for i, r in enumerate(runs)]}

    @app.get("/api/runs/{index}")
    async def run_view(index: int):
        return await asyncio.to_thread(read_run, get_run(index))

    @app.get("/api/runs/{index}/grid")
    async def run_grid(index: int):
        grids = sorted((get_run(index) / "progress").glob("step_*.png"))
        if not grids:
            return error("no progress grid yet (one comes every --sample-every steps)", 404)
        return FileResponse(grids[-1], media_type="image/png", headers={"Cache-Control": "no-store"})


def serve(model_dirs: list[str], run_dirs: list[str], host: str = "127.0.0.1", port: int = 7860,
          limits: Limits | None = None) -> None:
    """Load the models, check the runs, then serve until Ctrl-C."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UserError('dreamlet serve needs FastAPI and uvicorn: pip install "dreamlet[serve]"') from None
    if not model_dirs and not run_dirs:
        raise UserError("give at least one --model DIR to draw with or --run RUNDIR to watch")
    for run in run_dirs:
        if not Path(run).is_dir():
            raise UserError(f"run directory not found: {run} (the --out of dreamlet train)")
    limits = limits or Limits()
    for name in ("max_images", "max_steps", "max_prompt_chars"):
        if getattr(limits, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if limits.queue < 0 or limits.timeout_s <= 0:
        raise UserError("--queue must be 0 or more and --timeout positive")
    app = create_app(model_dirs, run_dirs, limits)
    print(f"dreamlet serve: {len(model_dirs)} model(s), {len(run_dirs)} run(s) on http://{host}:{port}  "
          "(Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
