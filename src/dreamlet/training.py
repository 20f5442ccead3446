"""The training loop, written once for every model family.

forward -> backward -> clip -> AdamW step -> EMA -> log -> sample grid -> checkpoint, until a step
count or a time budget runs out. The data stream is indexed by step and every random draw comes
from one saved generator, so a resumed run continues exactly where the saved one stopped.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import math
import signal
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from tqdm import tqdm

from .checkpoint import (Interrupted, UserError, load_optimizer_state, load_tensors, optimizer_state, read_json, save_json,
                         save_tensors, write_dir_atomically)
from .config import from_dict, to_dict, updated
from .data import get_dataset
from .images import captioned_grid, to_tensor
from .models import get_family
from .pipeline import Pipeline, autocast, pick_device
from .text.tokenizer import CaptionTokenizer


# What a family may change (its TRAIN_DEFAULTS) and the value when it does not: a GAN wants another
# learning rate than a diffusion model, so these TrainConfig fields default to None, "the family's".
FAMILY_DEPENDENT = dict(batch_size=32, lr=2e-3, warmup=100, weight_decay=0.01, grad_clip=1.0, ema_decay=0.995)


@dataclass
class TrainConfig:
    """Everything one training run needs; the fields are the `dreamlet train` flags."""
    model: str = "diffusion"       # the model family (dreamlet.models.FAMILIES)
    out: str = "runs/train"        # run directory: the model goes to OUT/model, the resumable state to OUT/checkpoint
    resume: bool = False           # continue the run saved in OUT
    data: str = "shapes"            # a built-in set (shapes, emoji, digits) or a path
    format: str = ""               # the path's format ("" : detected; see dreamlet.data.formats)
    size: int = 32                 # image side in pixels
    preset: str = ""               # model size preset; "" picks "small" on CPU, "base" on a GPU
    settings: dict = field(default_factory=dict)  # model config changes, e.g. {"dit": {"depth": 6}} (--set)
    batch_size: int | None = None  # None: the family's (32 for diffusion: small batches, more steps on a CPU)
    lr: float | None = None        # peak AdamW learning rate (None: the family's, 2e-3 for diffusion)
    warmup: int | None = None      # linear warmup steps
    min_lr_ratio: float = 0.1      # cosine decay ends at lr * min_lr_ratio when the budget is spent
    weight_decay: float | None = None
    grad_clip: float | None = None  # 0: off
    ema_decay: float | None = None
    steps: int | None = None       # stop at this step (counted from the start of the run) ...
    minutes: float | None = None   # ... or after this much training time (also counted across resumes)
    seed: int = 0
    device: str = ""               # "" : cuda when available, else cpu
    precision: str = "auto"        # auto: bf16 autocast on a GPU, fp32 on a CPU | fp32 | bf16
    tokenizer_captions: int = 20000
    log_every: int = 20
    sample_every: int = 500        # steps between progress grids (0: never)
    checkpoint_every: int = 500    # steps between checkpoints (and always at the end)
    max_bad_steps: int = 5         # non-finite losses in a row before the run stops (each one is skipped)

    def resolved(self) -> "TrainConfig":
        """A copy with every None filled in: the family's TRAIN_DEFAULTS, else FAMILY_DEPENDENT."""
        family_defaults = FAMILY_DEPENDENT | getattr(get_family(self.model), "TRAIN_DEFAULTS", {})
        return dataclasses.replace(self, **{k: v for k, v in family_defaults.items() if getattr(self, k) is None})


@dataclass
class Progress:
    """What a `train(config, callback=...)` callback receives: after every `log_every` steps, and with
    `grid` set after each progress grid. Call `stop()` to end the run early (it saves first)."""
    step: int
    loss: float
    lr: float
    images_per_s: float
    elapsed_s: float
    grid: "Image.Image | None" = None
    stop_requested: bool = False

    def stop(self) -> None:
        self.stop_requested = True


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup, then cosine decay over the budget's progress (0..1)."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def train(config: TrainConfig, callback=None, quiet: bool = False) -> Path:
    """Train a model as `config` says and write OUT/model (EMA weights, config, tokenizer); returns that
    directory. `callback(progress)` is called as training goes (see Progress); Ctrl-C, SIGTERM and
    `progress.stop()` all end the run with a checkpoint saved, ready for `resume=True`."""
    config = config.resolved()
    out, device = Path(config.out), pick_device(config.device or None)
    if config.steps is None and config.minutes is None:
        raise UserError("give a budget: --steps N or --minutes M")
    family_name, family = config.model, get_family(config.model)
    dataset = get_dataset(config.data, config.size, config.seed, config.format or None, quiet)
    checkpoint_dir = out / "checkpoint"
    generator = torch.Generator().manual_seed(config.seed)
    step, elapsed = 0, 0.0

    if config.resume:
        if not (checkpoint_dir / "state.json").is_file():
            raise UserError(f"nothing to resume: no checkpoint in {checkpoint_dir}")
        state = read_json(checkpoint_dir / "state.json")
        if state["family"] != family_name:
            raise UserError(f"{out} holds a {state['family']} run, not {family_name}")
        saved = state["train"]
        if saved["size"] != config.size or saved["data"] != config.data:
            raise UserError(f"{out} was trained on {saved['data']} at {saved['size']} px; resume with the same --data and --size")
        model_config = from_dict(family.Config, state["model"])
        if hasattr(family, "prepare"):  # finish (or skip) its first stage, and take the budget that leaves
            config, _ = family.prepare(config, {}, device, quiet, saved=model_config)
        tokenizer = CaptionTokenizer.load(checkpoint_dir / "tokenizer.json", model_config.text.max_length)
        step, elapsed = state["step"], state["elapsed"]
    else:
        if (checkpoint_dir / "state.json").is_file():
            raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        model_overrides = copy.deepcopy(config.settings)
        if hasattr(family, "prepare"):  # a family that builds on another model first trains or finds it (dalle)
            config, model_overrides = family.prepare(config, model_overrides, device, quiet)
        preset = config.preset or ("base" if device.type == "cuda" else "small")
        if preset not in family.PRESETS:
            raise UserError(f"unknown --preset {preset!r}; choose one of: {', '.join(family.PRESETS)}")
        tokenizer = CaptionTokenizer.train(dataset.captions(config.tokenizer_captions))
        overrides = copy.deepcopy(family.PRESETS[preset])
        sized = {f.name for f in fields(family.Config)}
        if "image_size" in sized:
            overrides["image_size"] = config.size
        for network in sized & {"unet", "dit"}:
            overrides.setdefault(network, {})["image_size"] = config.size
        overrides.setdefault("text", {}).update(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id)
        try:
            model_config = updated(updated(family.Config(), overrides), model_overrides)
        except ValueError as error:
            raise UserError(f"--set: {error}") from None
        tokenizer = CaptionTokenizer(tokenizer.tokenizer, model_config.text.max_length)

    torch.manual_seed(config.seed)
    try:
        model = family.Model(model_config).to(device)
    except (ValueError, TypeError) as error:  # e.g. a --set value of the wrong kind
        raise UserError(f"cannot build a {family_name} model from this config: {error}") from None
    if not config.resume and getattr(model_config, "tokenizer", ""):  # the prior's frozen image tokenizer
        model.load_tokenizer(model_config.tokenizer)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    if hasattr(model, "param_groups"):  # e.g. a GAN: generator and discriminator, each with its own settings
        groups = model.param_groups(config.weight_decay)
    else:  # no weight decay on gains and biases
        groups = [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": config.weight_decay},
                  {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99))
    if config.resume:
        try:  # a checkpoint from another dreamlet version may not fit this model: say so, keep it
            tensors = load_tensors(checkpoint_dir / "state.safetensors")
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
            load_optimizer_state(optimizer, {k[4:]: v.to(device) for k, v in tensors.items() if k.startswith("opt.")},
                                 state["optimizer"])
            generator.set_state(tensors["rng"])
        except (RuntimeError, KeyError, ValueError, OSError) as error:
            raise UserError(f"cannot resume from {checkpoint_dir} (left as it is): "
                            f"{str(error).strip().splitlines()[0]}; train into a new --out") from None

    warnings = state.get("warnings", []) if config.resume else []  # what went wrong in training, kept with the model
    meta = {"data": config.data, "size": config.size, "train": to_dict(config), "warnings": warnings}
    pipeline = Pipeline(family_name, ema, tokenizer, meta, config.precision)
    empty = tokenizer([""]).to(device)
    preview = dataset.preview_captions(12)
    log_path = out / "train_log.csv"
    out.mkdir(parents=True, exist_ok=True)
    extra_columns = list(getattr(model, "log_fields", ()))
    if not config.resume or not log_path.exists():
        log_path.write_text(",".join(["step", "loss", "lr", "images_per_s", "elapsed_s"] + extra_columns) + "\n")
    parameters = sum(p.numel() for p in model.parameters())

    def save_checkpoint():
        def write(tmp: Path):
            tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
            tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
            opt_tensors, opt_meta = optimizer_state(optimizer)
            tensors |= {f"opt.{k}": v for k, v in opt_tensors.items()} | {"rng": generator.get_state()}
            save_tensors(tmp / "state.safetensors", tensors)
            save_json(tmp / "state.json", {"family": family_name, "step": step, "elapsed": elapsed,
                                           "train": to_dict(config), "model": to_dict(model_config),
                                           "optimizer": opt_meta, "warnings": warnings})
            tokenizer.save(tmp / "tokenizer.json")
        write_dir_atomically(checkpoint_dir, write)
        pipeline.save(out / "model")

    def budget_progress() -> float:
        if config.steps is not None:
            return step / max(config.steps, 1)
        return elapsed / (60 * config.minutes)

    def done() -> bool:
        return (config.steps is not None and step >= config.steps) or \
               (config.minutes is not None and elapsed >= 60 * config.minutes)

    total = config.steps if config.steps is not None else None
    bar = tqdm(total=total, initial=step if total else 0, disable=quiet, dynamic_ncols=True,
               desc=f"train {family_name} {parameters / 1e6:.1f}M params",
               bar_format="{desc}: {n_fmt}/{total_fmt} steps{postfix} [{elapsed}<{remaining}]" if total else
               "{desc}: {n_fmt} steps{postfix} [{elapsed}]")
    window_loss, window_steps, window_images, window_time = 0.0, 0, 0, 0.0
    bad_steps = 0
    mixed = autocast(device, config.precision)
    with StopSignals() as signals:
        while not done() and not signals.received:
            started = time.perf_counter()
            images, captions = dataset.batch(step * config.batch_size, config.batch_size)
            images, ids = to_tensor(images).to(device), tokenizer(captions).to(device)
            lr = learning_rate(config, step, budget_progress())
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            with mixed:
                loss = model.loss(images, ids, empty, generator)
            optimizer.zero_grad(set_to_none=True)
            finite = bool(torch.isfinite(loss))
            if finite:
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or float("inf"))
                finite = bool(torch.isfinite(norm))
            if not finite:  # skip the update (the data still moves on), and stop if it keeps happening
                bad_steps += 1
                tqdm.write(f"dreamlet: warning: non-finite loss or gradient at step {step}; step skipped")
                if bad_steps >= config.max_bad_steps:
                    bar.close()
                    raise UserError(f"{bad_steps} non-finite losses in a row at step {step}; lower --lr "
                                    f"(the last checkpoint, in {checkpoint_dir}, is kept)")
            else:
                bad_steps = 0
                optimizer.step()
                with torch.no_grad():  # EMA with a warmup, so early averages are not dominated by the init
                    d = min(config.ema_decay, (1 + step) / (10 + step))
                    for e, p in zip(ema.parameters(), model.parameters()):
                        e.lerp_(p, 1 - d)
                    for e, b in zip(ema.buffers(), model.buffers()):
                        e.copy_(b)
                window_loss, window_steps = window_loss + loss.item(), window_steps + 1
            step += 1
            spent = time.perf_counter() - started
            elapsed += spent
            window_images, window_time = window_images + len(images), window_time + spent
            progress = None
            if step % config.log_every == 0 or done():
                mean_loss, rate = window_loss / max(window_steps, 1), window_images / window_time
                extra = model.log_values() if extra_columns else {}
                with open(log_path, "a", newline="") as f:
                    csv.writer(f).writerow([step, f"{mean_loss:.5f}", f"{lr:.6g}", f"{rate:.1f}", f"{elapsed:.1f}"]
                                           + [f"{extra.get(k, float('nan')):.4f}" for k in extra_columns])
                warning = model.health() if hasattr(model, "health") else None
                if warning and not any(w["message"].split(":")[0] == warning.split(":")[0] for w in warnings):  # once each
                    warnings.append({"step": step, "message": warning})
                    tqdm.write(f"dreamlet: warning at step {step}: {warning}")
                left = f" {max(0.0, 60 * config.minutes - elapsed) / 60:.1f} min left" if total is None else ""
                bar.set_postfix_str(f"loss {mean_loss:.4f} {rate:.0f} img/s{left}")
                progress = Progress(step, mean_loss, lr, rate, elapsed)
                window_loss, window_steps, window_images, window_time = 0.0, 0, 0, 0.0
            bar.update(1)
            if config.sample_every and step % config.sample_every == 0 and not done() and getattr(model, "generates", True):
                grid_dir = out / "progress"
                grid_dir.mkdir(exist_ok=True)
                images = pipeline.draw(preview, list(range(len(preview))), steps=10)
                grid = captioned_grid(images, preview, columns=6)
                grid.save(grid_dir / f"step_{step:06d}.png")
                progress = progress or Progress(step, float("nan"), lr, float("nan"), elapsed)
                progress.grid = grid
            if callback is not None and progress is not None:
                callback(progress)
                if progress.stop_requested:
                    break
            if config.checkpoint_every and step % config.checkpoint_every == 0 and not done() and not bad_steps:
                save_checkpoint()  # not in a streak of skipped steps: the last checkpoint stays the last good one
        bar.close()
        save_checkpoint()
    if signals.received:
        raise Interrupted(signals.received, step, out)
    return out / "model"


class StopSignals:
    """While training, the first Ctrl-C or SIGTERM asks the loop to stop after the current step (it then
    saves a checkpoint); a second one interrupts at once. Only the main thread can own signals."""

    def __init__(self):
        self.received, self.previous = 0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def handle(self, number, frame):
        if self.received:
            raise KeyboardInterrupt
        self.received = number

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
