"""`dreamlet serve`: a local web page and JSON API to draw from trained models and watch runs train.

One worker thread draws, so a model is never called from two threads at once and the event loop keeps
answering (the page, progress, the run view, 429s) while it works. A drawing is a job: `POST /api/jobs`
queues it and answers at once, `GET /api/jobs/{id}` says how far it is, `DELETE /api/jobs/{id}` cancels
it (between two sampler steps); `POST /api/generate` does the same and waits for the pictures. Jobs beyond
the worker wait in a bounded queue: when it is full the answer is 429 at once, and a job that waited
longer than its timeout without starting fails with 503, so a busy server says so instead of piling up
work nobody waits for. Every picture drawn is saved under the output folder with its settings, which
is the page's history.

What a web page elsewhere could abuse is refused before any parsing (Guard): bodies over a size limit,
POSTs that are not application/json (a cross-site form or "simple" fetch), Host headers that are not this
server's (DNS rebinding), and, when a token is set (required beyond 127.0.0.1), requests without it.
"""

import asyncio
import base64
import binascii
import csv
import hashlib
import io
import json
import math
import os
import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from .checkpoint import UserError

NO_VERDICT = "no verdict (not a canonical shapes prompt)"
MAX_SEED = 2 ** 31 - 1  # the page's and JSON API's seeds: exact in a JavaScript number (pipeline allows 2^63 - 1)
MAX_LOG_POINTS = 2000  # the run view's loss curve keeps every k-th row beyond this
KEPT_JOBS = 200        # finished jobs remembered for polling; older ones are forgotten
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "dreamlet_token"


@dataclass
class Limits:
    max_images: int = 8           # pictures per request
    max_steps: int = 100          # sampler steps per picture
    max_prompt_chars: int = 500
    queue: int = 8                # requests that may wait while one draws; more get 429
    timeout_s: float = 60.0       # a request not started after this long gets 503
    max_body_bytes: int = 8 << 20  # a request body, refused before it is parsed (two 256 px PNGs fit)


class GenerateRequest(BaseModel):
    """A drawing: what `POST /api/generate` and `POST /api/jobs` take (the OpenAPI schema at /docs)."""
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"prompt": "a large red circle at the top left", "negative_prompt": "blue", "seed": 7, "num": 4}]})
    prompt: StrictStr = Field(description="what to draw")
    negative_prompt: StrictStr = Field("", description="what to draw away from (classifier-free guidance's "
                                                       "unconditional branch)")
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED, description="picture k gets seed + k; none: random")
    steps: StrictInt | None = Field(None, ge=1, description="sampler steps; none: the model's own")
    guidance: StrictFloat | StrictInt | None = Field(None, ge=0, le=50, description="classifier-free guidance scale")
    sampler: Literal["dpmpp_2m", "ddim"] | None = Field(None, description="none: the model's own")
    num: StrictInt = Field(1, ge=1, description="pictures to draw")
    model: StrictInt | StrictStr = Field(0, description="a model's index or name (GET /api/models)")
    init_image: StrictStr | None = Field(None, description="a PNG or JPEG, base64: draw image-to-image from it")
    mask_image: StrictStr | None = Field(None, description="with init_image, a PNG, base64: light where to draw "
                                                           "(inpainting); the rest is kept")
    strength: StrictFloat | StrictInt | None = Field(None, ge=0, le=1, description="how far down the noise schedule "
                                                     "the picture starts (0: as it is; 1: from noise)")


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Cancelled(Exception):
    """Raised in a drawing's progress callback when its job was cancelled: the drawing stops there."""


def model_name(path: Path) -> str:
    """runs/demo/model -> "demo" (every model directory is called model, its run is what tells them apart)."""
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def describe(index: int, pipeline) -> dict:
    """A loaded model as the API shows it: a name, never a path."""
    from .models import get_family
    family = get_family(pipeline.family)
    return dict(index=index, name=model_name(Path(pipeline.path or f"model{index}")), family=pipeline.family,
                size=pipeline.image_size, data=Path(str(pipeline.meta.get("data", "?"))).name,
                edits=family.edits and pipeline.base is None, negative=family.guided)


def decode_picture(text: str, name: str, mask: bool = False):
    """A base64 PNG or JPEG (a data: URL too) as a PIL image, or BadRequest."""
    from PIL import Image, UnidentifiedImageError
    try:
        raw = base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            if image.format not in ("PNG", "JPEG", "WEBP"):
                raise ValueError(image.format)
            return image.convert("L" if mask else "RGB")
    except (binascii.Error, ValueError, OSError, UnidentifiedImageError, Image.DecompressionBombError):
        raise BadRequest(f"{name}: not a base64 PNG, JPEG or WebP picture") from None


def check_request(request: GenerateRequest, limits: Limits, models: list[dict]) -> dict:
    """The job a well-typed request asks for, within this server's limits, or BadRequest saying why not."""
    if not request.prompt.strip():
        raise BadRequest("prompt: give some text to draw")
    for name in ("prompt", "negative_prompt"):
        if len(getattr(request, name)) > limits.max_prompt_chars:
            raise BadRequest(f"{name}: {len(getattr(request, name))} characters, at most {limits.max_prompt_chars}")
    if request.num > limits.max_images:
        raise BadRequest(f"num must be between 1 and {limits.max_images}, not {request.num}")
    if request.steps is not None and request.steps > limits.max_steps:
        raise BadRequest(f"steps must be between 1 and {limits.max_steps}, not {request.steps}")
    matches = [m for m in models if request.model in (m["index"], m["name"])]
    if not matches:
        raise BadRequest(f"model: no model {request.model!r}; loaded: {', '.join(m['name'] for m in models) or 'none'}")
    model = matches[0]
    if request.init_image is None and (request.mask_image is not None or request.strength is not None):
        raise BadRequest("mask_image and strength edit a picture: give init_image as well")
    if request.init_image is not None and not model["edits"]:
        raise BadRequest(f"model {model['name']}: a {model['family']} model does not edit pictures")
    if request.negative_prompt and not model["negative"]:
        raise BadRequest(f"negative_prompt: a {model['family']} model draws without guidance and has no use for one")
    return dict(prompt=request.prompt, negative=request.negative_prompt, model=model["index"],
                seed=secrets.randbelow(MAX_SEED) if request.seed is None else request.seed, num=request.num,
                steps=request.steps, guidance=request.guidance, sampler=request.sampler, strength=request.strength,
                image=None if request.init_image is None else decode_picture(request.init_image, "init_image"),
                mask=None if request.mask_image is None else decode_picture(request.mask_image, "mask_image", True))


def png_bytes(image, settings: dict | None = None) -> bytes:
    """A picture as PNG, with the settings that drew it in its "dreamlet" text chunk (as `sample` writes)."""
    from .sample import settings_chunk
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=None if settings is None else settings_chunk(settings))
    return buffer.getvalue()


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


def write_file(path: Path, data: bytes) -> None:
    """The file whole or not at all: written under a name of its own, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def tail_lines(path: Path, count: int, block: int = 1 << 16) -> list[str]:
    """The last `count` lines of a text file, read from its end: a page load costs the same on a history of
    ten drawings or of a million."""
    with open(path, "rb") as f:
        end = f.seek(0, 2)
        data, start = b"", end
        while start > 0 and data.count(b"\n") <= count:
            start = max(0, start - block)
            f.seek(start)
            data = f.read(end - start)
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > 0:  # the first line read may be the end of a longer one
        lines = lines[1:]
    return lines[-count:] if count > 0 else []


class History:
    """Every picture the server drew, as PNG files with their settings under `folder`, and one line per
    drawing in history.jsonl (newest last): what the page shows again after a reload. The pictures a
    drawing started from are kept under inputs/, named by their content, so every PNG can be drawn again
    (`dreamlet sample --from-png`)."""
    NAME = re.compile(r"^(inputs/)?[\w.-]+\.png$")

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.lock = threading.Lock()

    def keep_input(self, image) -> str:
        data = png_bytes(image)
        name = f"inputs/{hashlib.sha256(data).hexdigest()[:16]}.png"
        if not (self.folder / name).is_file():
            write_file(self.folder / name, data)
        return name

    def add(self, entry: dict, pictures: list[bytes]) -> list[str]:
        """Writes the pictures of one drawing and its line; returns their file names."""
        with self.lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{entry['id']}"
            names = [f"{stem}-{k}.png" for k in range(len(pictures))]
            for name, data in zip(names, pictures):
                write_file(self.folder / name, data)
            with open(self.folder / "history.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry | {"files": names}) + "\n")
            return names

    def latest(self, count: int) -> list[dict]:
        """The last `count` drawings, newest first (a damaged line is skipped)."""
        path = self.folder / "history.jsonl"
        if not path.is_file():
            return []
        with self.lock:
            lines = tail_lines(path, count)
        entries = []
        for line in reversed(lines):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries

    def path(self, name: str) -> Path | None:
        """A picture of the history by its file name; None for any other name (nothing outside the folder)."""
        if not self.NAME.match(name) or ".." in name:
            return None
        path = self.folder / name
        return path if path.is_file() else None


@dataclass
class Job:
    id: str
    request: dict
    queued: float = field(default_factory=time.perf_counter)
    state: str = "queued"         # queued | drawing | done | cancelled | failed
    progress: float = 0.0
    cancel: bool = False
    result: dict | None = None
    error: str | None = None
    status: int = 200             # the HTTP status a failed job answers POST /api/generate with

    def view(self) -> dict:
        out = dict(id=self.id, state=self.state, progress=round(self.progress, 4))
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out


class Worker:
    """One thread draws the jobs in turn; a bounded number may wait (429 beyond it)."""

    def __init__(self, pipelines: list, infos: list[dict], limits: Limits, history: History):
        self.pipelines, self.infos, self.limits, self.history = pipelines, infos, limits, history
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dreamlet-draw")
        self.jobs: dict[str, Job] = {}
        self.pending = 0  # jobs admitted and not finished: the one drawing and those waiting
        self.lock = threading.Lock()  # pending goes up on the event loop's thread and down on the worker's

    def submit(self, request: dict) -> tuple[Job, asyncio.Future]:
        with self.lock:
            if self.pending > self.limits.queue:
                raise BadRequest(f"busy: {self.pending} requests ahead and the queue holds {self.limits.queue}; "
                                 "try again soon", 429)
            self.pending += 1
        job = Job(secrets.token_hex(6), request)
        self.jobs[job.id] = job
        for old in list(self.jobs)[:-KEPT_JOBS]:
            if self.jobs[old].state in ("done", "cancelled", "failed"):
                del self.jobs[old]
        future = self.pool.submit(self.run, job)
        future.add_done_callback(lambda _: self.finished())
        return job, asyncio.wrap_future(future)

    def finished(self) -> None:
        with self.lock:
            self.pending -= 1

    def expire(self, job: Job) -> bool:
        """A job still queued after the timeout fails with 503 (True when that happened now or before)."""
        if job.state == "queued" and time.perf_counter() - job.queued > self.limits.timeout_s:
            job.state, job.status = "failed", 503
            job.error = f"busy: waited {self.limits.timeout_s:g} s without starting; try again later"
        return job.status == 503

    def run(self, job: Job) -> None:
        if job.cancel or self.expire(job):
            job.state = "cancelled" if job.cancel else job.state
            return
        job.state = "drawing"

        def progress(fraction: float) -> None:
            if job.cancel:
                raise Cancelled
            job.progress = fraction
        try:
            job.result = draw(self.pipelines[job.request["model"]], self.infos[job.request["model"]], job,
                              progress, self.history)
            job.state, job.progress = "done", 1.0
        except Cancelled:
            job.state = "cancelled"
        except UserError as bad:  # e.g. a model family that does not draw
            job.state, job.status, job.error = "failed", 400, str(bad)
        except Exception as crash:  # noqa: BLE001  one line to the page; the server keeps serving
            job.state, job.status, job.error = "failed", 500, f"drawing failed: {type(crash).__name__}: {crash}"


def draw(pipeline, info: dict, job: Job, progress, history: History) -> dict:
    """A checked job's answer: the pictures as PNG (kept in the history too), their seeds, shapes
    verdicts, timings."""
    from . import __version__
    started, r = time.perf_counter(), job.request
    edit = {} if r["image"] is None else dict(image=r["image"], mask_image=r["mask"], strength=r["strength"])
    images = pipeline(r["prompt"], seed=r["seed"], num=r["num"], steps=r["steps"], guidance=r["guidance"],
                      sampler=r["sampler"], negative=r["negative"], progress=progress, **edit)
    settings = images.settings | {"model": info["name"], "size": info["size"], "negative_prompt": r["negative"]}
    if edit:  # the pictures it started from, by their names in the history's folder
        settings |= {"init_image": history.keep_input(r["image"])} | (
            {"mask": history.keep_input(r["mask"])} if r["mask"] is not None else {})
    pictures = [png_bytes(im, {"prompt": r["prompt"], "seed": seed} | settings | {"dreamlet": __version__})
                for im, seed in zip(images, images.seeds)]
    out = dict(images=[base64.b64encode(p).decode() for p in pictures], seed=r["seed"], seeds=images.seeds,
               model=info["name"], size=info["size"], settings=settings)
    if info["data"] == "shapes":
        out["verdicts"] = [verdict(im, r["prompt"]) for im in images]
    out["timings"] = dict(queue_s=round(started - job.queued, 4), generate_s=round(time.perf_counter() - started, 4))
    out["files"] = history.add({k: v for k, v in out.items() if k != "images"}
                               | {"id": job.id, "prompt": r["prompt"], "time": time.time()}, pictures)
    return out


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
    return dict(name=run.name, rows=len(rows), log={k: [r[k] for r in rows] for k in columns},
                latest=rows[-1] if rows else None, grid_step=int(grids[-1].stem[5:]) if grids else None,
                done=(run / "model" / "config.json").is_file(),
                age_s=round(time.time() - log.stat().st_mtime, 1) if log.is_file() else None)


class Guard:
    """ASGI middleware that refuses, before the app parses anything: a Host header that is not one of
    `hosts` (None: any), a missing or wrong token (when `token` is set: `Authorization: Bearer TOKEN`, or
    the cookie that `/?token=TOKEN` sets for the page), a POST that is not application/json, and a body
    over `max_body_bytes` (read up to the limit, never further)."""

    def __init__(self, app, hosts: tuple[str, ...] | None, token: str | None, max_body_bytes: int):
        self.app, self.hosts, self.token, self.max_body_bytes = app, hosts, token, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(scope, headers)
        if refusal is None and scope["method"] == "POST":
            body, refusal = await self.read_body(receive, headers)
            if refusal is None:
                receive = replay(body)
        if refusal is not None:
            return await error(*refusal)(scope, receive, send)
        if self.token and scope["path"] == "/" and query_token(scope):
            return await self.set_cookie(scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, scope, headers: dict) -> tuple[str, int] | None:
        host = headers.get("host", "")
        name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        if self.hosts is not None and name not in self.hosts:
            return f"Host {host!r} is not this server's (serve --host NAME to be reached by that name)", 421
        if self.token and not self.authorised(scope, headers):
            return "this server needs its token: open the page as /?token=TOKEN or send Authorization: Bearer", 401
        if scope["method"] == "POST" and headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return "send the body as JSON with Content-Type: application/json", 415
        return None

    def authorised(self, scope, headers: dict) -> bool:
        from http.cookies import SimpleCookie
        cookie = SimpleCookie(headers.get("cookie", "")).get(TOKEN_COOKIE)
        given = [headers.get("authorization", "").removeprefix("Bearer "), query_token(scope),
                 cookie.value if cookie else ""]
        return any(secrets.compare_digest(g.encode(), self.token.encode()) for g in given if g)

    async def read_body(self, receive, headers: dict) -> tuple[bytes, tuple[str, int] | None]:
        too_big = (f"the body is over {self.max_body_bytes} bytes", 413)
        if int(headers.get("content-length", "0") or 0) > self.max_body_bytes:
            return b"", too_big
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return b"", too_big
        return body, None

    async def set_cookie(self, scope, receive, send):
        """/?token=TOKEN (checked above): the token as an HttpOnly cookie, then the page without it in the URL."""
        from fastapi.responses import RedirectResponse
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        await response(scope, receive, send)


def query_token(scope) -> str:
    """The `token` of a request's query string (percent-decoded), or ""."""
    from urllib.parse import parse_qs
    return parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]


def replay(body: bytes):
    """An ASGI receive() that gives the app a body already read."""
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return receive


def error(message: str, status: int):
    """An answer in the API's error shape, {"error": message}."""
    from fastapi.responses import JSONResponse
    return JSONResponse({"error": message}, status_code=status)


def validation_message(errors: list[dict]) -> str:
    """FastAPI's list of validation errors as the one line a person reads."""
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"][1:] if part not in ("int", "str", "float"))
    if first["type"] == "json_invalid" or (first["type"] == "missing" and not where):
        return 'the body is not JSON; send {"prompt": "..."} with Content-Type: application/json'
    if first["type"] == "model_attributes_type":
        return 'the body must be a JSON object such as {"prompt": "a red circle"}'
    if first["type"] == "extra_forbidden":
        return f"unknown field: {where}"
    if first["type"] == "missing":
        return f"{where}: required"
    return f"{where}: {first['msg'][0].lower()}{first['msg'][1:]}, not {first.get('input')!r}"


def create_app(models: list, runs: list = (), limits: Limits | None = None, out: str | Path = "runs/serve",
               hosts: tuple[str, ...] | None = LOOPBACK, token: str | None = None):
    """The FastAPI app over loaded pipelines (or model directories) and run directories; the pictures
    it draws go to `out`. `hosts`: the Host names it answers (None: any); `token`: required when set."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse
    from starlette.exceptions import HTTPException
    from .pipeline import Pipeline

    limits = limits or Limits()
    pipelines = [m if isinstance(m, Pipeline) else Pipeline.load(m) for m in models]
    infos = [describe(i, p) for i, p in enumerate(pipelines)]
    page = files("dreamlet").joinpath("static/index.html").read_text()
    app = FastAPI(title="dreamlet", version=__import__("dreamlet").__version__, docs_url=None, redoc_url=None,
                  description="Draw from dreamlet models and watch runs train (docs/serve.md).")
    app.add_middleware(Guard, hosts=hosts, token=token, max_body_bytes=limits.max_body_bytes)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):  # 404s and 405s in the same {"error"} shape as the rest
        return error(str(exc.detail), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        return error(validation_message(exc.errors()), 400)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page

    @app.get("/api/models")
    async def list_models():
        """The loaded models (index, name, family, size, data, what they can do) and this server's limits."""
        return {"models": infos, "limits": limits.__dict__}

    history = History(out)
    add_drawing(app, Worker(pipelines, infos, limits, history), infos, limits)
    add_history(app, history)
    add_runs(app, [Path(r) for r in runs])
    add_docs(app)
    return app


def add_drawing(app, worker: Worker, infos: list[dict], limits: Limits) -> None:
    """POST /api/generate (waits for the pictures), POST /api/jobs (answers at once with a job to poll),
    GET /api/jobs/{id} (its state and progress), DELETE /api/jobs/{id} (cancel)."""
    from starlette.exceptions import HTTPException

    def admit(request: GenerateRequest):
        return worker.submit(check_request(request, limits, infos))

    @app.post("/api/generate")
    async def generate(request: GenerateRequest):
        """Draw and wait: the pictures (base64 PNG, each with its settings), their seeds, verdicts, timings."""
        try:
            job, done = admit(request)
        except BadRequest as bad:
            return error(str(bad), bad.status)
        try:
            await asyncio.wait_for(asyncio.shield(done), limits.timeout_s)
        except asyncio.TimeoutError:
            if worker.expire(job):  # still queued: it gives up; once drawing, it finishes
                return error(job.error, 503)
            await done
        return job.result if job.state == "done" else error(job.error or "cancelled", job.status)

    @app.post("/api/jobs", status_code=202)
    async def start_job(request: GenerateRequest):
        """Queue a drawing and answer at once: {"id", "state", "progress"}; poll GET /api/jobs/{id}."""
        try:
            job, _ = admit(request)
        except BadRequest as bad:
            return error(str(bad), bad.status)
        return job.view()

    def get_job(job_id: str) -> Job:
        if job_id not in worker.jobs:
            raise HTTPException(404, f"no job {job_id!r} (finished jobs are kept for a while, then forgotten)")
        return worker.jobs[job_id]

    @app.get("/api/jobs/{job_id}")
    async def job_state(job_id: str):
        """queued, drawing (with progress from 0 to 1), done (with the result), cancelled or failed (with the error)."""
        job = get_job(job_id)
        worker.expire(job)
        return job.view()

    @app.delete("/api/jobs/{job_id}")
    async def cancel_job(job_id: str):
        """Cancel: a queued job never starts; a drawing one stops after its current sampler step."""
        job = get_job(job_id)
        job.cancel = True
        if job.state == "queued":
            job.state = "cancelled"
        return job.view()


def add_history(app, history: History) -> None:
    """GET /api/history (the latest drawings, newest first) and /api/history/files/{name} (a picture)."""
    from fastapi.responses import FileResponse

    @app.get("/api/history")
    async def latest(limit: int = 50):
        """The latest drawings, newest first: prompt, settings, seeds, verdicts and the files of their pictures."""
        return {"history": await asyncio.to_thread(history.latest, max(1, min(limit, 500)))}

    @app.get("/api/history/files/{name:path}")
    async def picture(name: str):
        path = history.path(name)
        if path is None:
            return error(f"no picture {name!r} in the history", 404)
        return FileResponse(path, media_type="image/png")


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
        """The runs being watched, by index and name."""
        return {"runs": [dict(index=i, name=r.name) for i, r in enumerate(runs)]}

    @app.get("/api/runs/{index}")
    async def run_view(index: int):
        """A run's training log as columns, its latest step, whether its model is written."""
        return await asyncio.to_thread(read_run, get_run(index))

    @app.get("/api/runs/{index}/grid")
    async def run_grid(index: int):
        grids = sorted((get_run(index) / "progress").glob("step_*.png"))
        if not grids:
            return error("no progress grid yet (one comes every --sample-every steps)", 404)
        return FileResponse(grids[-1], media_type="image/png", headers={"Cache-Control": "no-store"})


def add_docs(app) -> None:
    """The OpenAPI page at /docs, from the typed request models, with Swagger UI's files served from
    this machine (the swagger-ui-bundle package) rather than a CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:  # the schema alone (/openapi.json) still describes the API
        return
    app.mount("/docs-files", StaticFiles(directory=swagger_ui_path), name="docs-files")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="dreamlet API",
                                   swagger_js_url="/docs-files/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-files/swagger-ui.css", swagger_favicon_url="data:,",
                                   swagger_ui_parameters={"validatorUrl": None})


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def serve(model_dirs: list[str], run_dirs: list[str], host: str = "127.0.0.1", port: int = 7860,
          limits: Limits | None = None, out: str = "runs/serve", token: str | None = None) -> None:
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
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    token = token or os.environ.get("DREAMLET_TOKEN") or None
    if not is_loopback(host) and not token:
        raise UserError(f"--host {host} lets other machines in: give --token TOKEN (or DREAMLET_TOKEN) that they "
                        "must send")
    limits = limits or Limits()
    for name in ("max_images", "max_steps", "max_prompt_chars", "max_body_bytes"):
        if getattr(limits, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if limits.queue < 0 or limits.timeout_s <= 0:
        raise UserError("--queue must be 0 or more and --timeout positive")
    # Host names it answers: the loopback names, and the one it is bound to; bound to every address, any
    # (the token then keeps other pages out).
    hosts = None if host in ("0.0.0.0", "::") else tuple({*LOOPBACK, host})
    app = create_app(model_dirs, run_dirs, limits, out, hosts, token)
    print(f"dreamlet serve: {len(model_dirs)} model(s), {len(run_dirs)} run(s) on http://{host}:{port}"
          f"{'/?token=...' if token else ''}  (pictures to {out}; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
