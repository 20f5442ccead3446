"""The training loop, written once for every model family.

forward -> backward -> clip -> AdamW step -> EMA -> log -> sample grid -> checkpoint, until a step
count or a time budget runs out. The data stream is indexed by step and every random draw comes
from one saved generator, so a resumed run continues exactly where the saved one stopped.

The same loop runs as one process or as several (`accelerate launch` / `torchrun`, one per GPU or
CPU worker, on one machine or several): Hugging Face accelerate starts the process group and wraps
the model in DistributedDataParallel; each process trains on its own slice of every global batch
(scaling.micro_batches) and the main process alone writes logs, grids and checkpoints
(docs/training.md).
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import functools
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .bars import progress_bar
from .card import trained as trained_facts
from .checkpoint import (Interrupted, UserError, load_optimizer_state, load_tensors, optimizer_state, read_json,
                         restore_interrupted, save_json, save_tensors, write_dir_atomically)
from .config import to_dict, updated
from .data import FITS, get_dataset
from .images import captioned_grid, to_tensor
from .models import Family, get_family
from .optimizer import OPTIMIZERS, make_optimizer
from .pipeline import PRECISIONS, Pipeline, autocast, pick_device
from .scaling import (budget_bytes, check_split, has_unused_parameters, measure_footprint, step_batches,
                      plan_memory, set_activation_checkpointing)
from .text.tokenizer import CaptionTokenizer, load_tokenizer, tokenizer_for


# What a family may change (its TRAIN_DEFAULTS) and the value when it does not: a GAN wants another
# learning rate than a diffusion model, so these TrainConfig fields default to None, "the family's".
FAMILY_DEPENDENT = dict(batch_size=32, lr=2e-3, warmup=100, weight_decay=0.01, grad_clip=1.0, ema_decay=0.995,
                        optimizer="adamw")


def flag(default, help: str, **argparse_options):
    """A TrainConfig field with its `dreamlet train` help (and argparse options such as choices or metavar):
    the CLI builds its training flags from these."""
    return field(default=default, metadata=dict(help=help, **argparse_options))


@dataclass
class TrainConfig:
    """Everything one training run needs; every field is a `dreamlet train` flag (--batch-size for
    batch_size), built from these declarations by the CLI."""
    model: str = flag("diffusion", "the model family (dreamlet.models.FAMILIES)")
    out: str = flag("runs/train", "run directory: the model goes to OUT/model, the resumable state to OUT/checkpoint")
    resume: bool = flag(False, "continue the run saved in OUT")
    data: str = flag("shapes", "a built-in set (shapes, emoji, digits) or a path")
    format: str = flag("", "the format of a --data path (default: detected; see docs/data.md)")
    size: int = flag(32, "image side in pixels (shapes: 16, 32, 64, 128)")
    caption_column: str = flag("", "the column that holds the captions in imagefolder metadata or parquet (default: "
                                   "the first of text, caption, captions, txt, prompt, sentence)", metavar="NAME")
    fit: str = flag("crop", "pictures that are not square: crop (the centre square, for photos; the default) or pad "
                            "(whole, on their background colour: icons, clip art, banners)", choices=FITS)
    preset: str = flag("small", "model size: tiny, small (the tuned default, CPU and GPU), base (wider; "
                                "docs/training.md)")
    settings: dict = field(default_factory=dict)  # model config changes, e.g. {"dit": {"depth": 6}} (--set)
    init_from: str = flag("", "fine-tune: start from this trained model's weights and tokenizer (RUN/model) on --data, "
                              "as a run of its own (its architecture; new words get tokens of their own)",
                          metavar="MODEL")
    batch_size: int | None = flag(None, "pictures per step (default: the family's, 32 for diffusion: small batches, "
                                        "more steps on a CPU)")
    lr: float | None = flag(None, "peak AdamW learning rate (default: the family's, 2e-3 for diffusion)")
    warmup: int | None = flag(None, "linear warmup steps (default: the family's, 100 for diffusion)")
    min_lr_ratio: float = flag(0.1, "the cosine decay ends at lr x this when the budget is spent")
    weight_decay: float | None = flag(None, "AdamW weight decay (default: the family's, 0.01 for diffusion)")
    optimizer: str | None = flag(None, "adamw, or muon: Muon for the transformer blocks' weight matrices, AdamW "
                                       "for the rest (default: the family's, muon for diffusion, else adamw; a "
                                       "resumed run keeps its own)", choices=OPTIMIZERS)
    grad_clip: float | None = flag(None, "clip the gradient norm at this (0: off; default: the family's, 1)")
    ema_decay: float | None = flag(None, "decay of the weights' moving average that is saved (default: the "
                                         "family's, 0.995 for diffusion)")
    steps: int | None = flag(None, "stop at this step, counted from the start of the run ...")
    minutes: float | None = flag(None, "... or after this much training time (also counted across resumes)")
    seed: int = flag(0, "seeds the model's initialisation, the data order and every random draw of training")
    device: str = flag("", "cpu or cuda (default: cuda when available)")
    precision: str = flag("auto", "auto: bf16 autocast on a GPU, fp32 on a CPU", choices=PRECISIONS)
    tokenizer_captions: int = flag(20000, "captions the tokenizer is trained on")
    log_every: int = flag(20, "steps between training-log rows (train_log.csv, TensorBoard, wandb)")
    sample_every: int = flag(500, "steps between progress grids (0: never)")
    checkpoint_every: int = flag(500, "steps between checkpoints (and always at the end)")
    max_bad_steps: int = flag(5, "non-finite losses in a row before the run stops (each one is skipped)")
    accumulate: int = flag(1, "split each step's batch into N micro-batches (same batch, less memory)", metavar="N")
    checkpointing: bool = flag(False, "activation checkpointing: recompute the transformer blocks in the backward "
                                      "pass (less memory, about 30 %% slower)")
    compile: bool = flag(False, "torch.compile the networks (slower on CPU, docs/benchmarks.md; try it on a GPU)")
    max_memory: float | None = flag(None, "memory per process in GiB: measure the model, then choose --accumulate "
                                          "and --checkpointing to fit", metavar="GB")
    wandb: str = flag("", "also log to this Weights & Biases project (pip install \"dreamlet[wandb]\")",
                      metavar="PROJECT")
    workers: int | None = flag(None, "processes drawing the next steps' pictures ahead of training (default: up "
                                     "to 4 on a GPU, 0 on a CPU)", metavar="N")

    def resolved(self) -> "TrainConfig":
        """A copy with every None filled in: the family's TRAIN_DEFAULTS, else FAMILY_DEPENDENT."""
        family_defaults = FAMILY_DEPENDENT | get_family(self.model).train_defaults
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
    pipeline: "Pipeline | None" = field(default=None, repr=False)

    def stop(self) -> None:
        self.stop_requested = True

    def save(self, directory: str | Path) -> Path:
        """Write the model as it is now (EMA weights, config, tokenizer) to `directory`, a model
        directory like OUT/model: to keep the model at several points of one run."""
        if self.pipeline is None:
            raise ValueError("this Progress has no model to save")
        self.pipeline.save(Path(directory))
        return Path(directory)


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup, then cosine decay over the budget's progress (0..1)."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


@dataclass
class FirstStage:
    """A model a family trains before its own in the same command (dalle's image tokenizer), as its
    prepare hook declares it. The loop trains `config`, resuming it when its folder holds a checkpoint,
    then `then(model_dir)` gives the family's own (train_config, overrides)."""
    config: TrainConfig                # its run, in a folder of OUT (e.g. OUT/tokenizer), with its budget
    then: Callable[[Path], tuple]      # its model directory -> the family's own (train_config, overrides)
    name: str                          # what it trains, for "stage 1 of 2: NAME, into DIR"
    next_name: str                     # what trains after it, for "stage 2 of 2: NEXT_NAME"


def first_stage_config(config: TrainConfig, model: str, out: Path, share: float, **changes) -> TrainConfig:
    """The run of a first stage a family declares: the same data (format, fit, caption column, size), seed,
    device and precision as the whole command, no progress grids, and `share` of a time budget (with
    --steps, the same step count), in the folder `out`."""
    budget = dict(minutes=config.minutes * share) if config.minutes else dict(steps=config.steps)
    return TrainConfig(model=model, out=str(out), data=config.data, format=config.format, fit=config.fit,
                       caption_column=config.caption_column, size=config.size, seed=config.seed,
                       device=config.device, precision=config.precision,
                       sample_every=0, checkpoint_every=config.checkpoint_every, **budget, **changes)


def after_first_stage(config: TrainConfig, share: float) -> TrainConfig:
    """The family's own run: what a first stage with `share` of a time budget left of it."""
    return dataclasses.replace(config, minutes=config.minutes * (1 - share)) if config.minutes else config


@dataclass(eq=False)
class Run:
    """One training run as `start_run` sets it up and the loop moves it on. `step` and `elapsed` (the
    training seconds) count from the start of the run, across resumes."""
    config: TrainConfig                # resolved, with a first stage's budget taken and --max-memory's plan
    family: Family
    processes: object                  # accelerate's PartialState: this process's place in the run
    device: torch.device
    quiet: bool                        # True in every process but the main one
    dataset: object
    generator: torch.Generator         # every random draw of training, saved with each checkpoint
    tokenizer: object                  # the captions' tokenizer
    model_config: object
    model: torch.nn.Module
    ema: torch.nn.Module               # the weights' moving average: what OUT/model holds and the grids draw
    optimizer: torch.optim.Optimizer
    step: int = 0
    elapsed: float = 0.0
    warnings: list = field(default_factory=list)  # what went wrong in training, kept with the model
    empty: torch.Tensor | None = None  # the empty caption's ids
    mixed: object = None               # --precision's autocast
    trainer: torch.nn.Module | None = None  # the model's loss, wrapped by accelerate (DDP on several processes)
    stepper: object = None             # the optimizer, wrapped by accelerate
    accelerator: object = None
    pipeline: Pipeline | None = None   # the EMA model with its tokenizer: progress grids and OUT/model
    grid_prompts: list = field(default_factory=list)   # the progress grids' captions
    extra_columns: list = field(default_factory=list)  # the family's own training-log columns
    log: "RunLog | None" = None        # TensorBoard and wandb (the main process only)

    @property
    def world(self) -> int:
        return self.processes.num_processes

    @property
    def rank(self) -> int:
        return self.processes.process_index

    @property
    def main(self) -> bool:
        return self.processes.is_main_process

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoint"

    def budget_progress(self) -> float:
        if self.config.steps is not None:
            return self.step / max(self.config.steps, 1)
        return self.elapsed / (60 * self.config.minutes)

    def done(self) -> bool:
        return (self.config.steps is not None and self.step >= self.config.steps) or \
               (self.config.minutes is not None and self.elapsed >= 60 * self.config.minutes)


@dataclass
class Window:
    """What the steps since the last log row add up to (a skipped step adds to `images` and `time` only)."""
    loss: float = 0.0
    norm: float = 0.0
    steps: int = 0
    images: int = 0
    time: float = 0.0

    def add_update(self, loss: float, norm: torch.Tensor) -> None:
        self.loss, self.norm, self.steps = self.loss + loss, self.norm + float(norm), self.steps + 1


def train(config: TrainConfig, callback=None, quiet: bool = False) -> Path:
    """Train a model as `config` says and write OUT/model (EMA weights, config, tokenizer); returns that
    directory. `callback(progress)` is called as training goes (see Progress); Ctrl-C, SIGTERM and
    `progress.stop()` all end the run with a checkpoint saved, ready for `resume=True`. Launched as
    several processes, every process calls this and trains; the main one alone writes and calls back."""
    run = start_run(config, quiet)
    config, window, bad_steps, bar = run.config, Window(), 0, training_bar(run)
    batches = step_batches(run.dataset, run.step, config.batch_size, config.accumulate, run.rank, run.world,
                           data_workers(config, run.device))
    with StopSignals() as signals, run.log or contextlib.nullcontext():  # the writer closes (flushes) on the way out
        while not run.done() and not signals.received:
            started = time.perf_counter()
            lr = learning_rate(config, run.step, run.budget_progress())
            for group in run.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss, finite, norm = train_step(run, next(batches))
            if not finite:  # skip the update (the data still moves on), and stop if it keeps happening
                bad_steps += 1
                if run.main:
                    tqdm.write(f"dreamlet: warning: non-finite loss or gradient at step {run.step}; step skipped")
                if bad_steps >= config.max_bad_steps:
                    bar.close()
                    raise UserError(f"{bad_steps} non-finite losses in a row at step {run.step}; lower --lr "
                                    f"(the last checkpoint, in {run.checkpoint_dir}, is kept)")
            else:
                bad_steps = 0
                window.add_update(loss, norm)
            run.step += 1
            spent = time.perf_counter() - started
            run.elapsed += spent
            if run.world > 1:  # a time budget ends at the same step in every process: the slowest clock counts
                run.elapsed, = agree(run.processes, [run.elapsed])
            window.images, window.time = window.images + config.batch_size, window.time + spent
            progress = None
            if run.step % config.log_every == 0 or run.done():
                progress, window = log_row(run, window, lr, bar), Window()
            bar.update(1)
            if run.main and config.sample_every and run.step % config.sample_every == 0 and not run.done() \
                    and run.family.can_draw(run.model_config):
                progress = progress or Progress(run.step, float("nan"), lr, float("nan"), run.elapsed,
                                                pipeline=run.pipeline)
                progress.grid = progress_grid(run)
            if stop_requested(run, callback, progress, signals):
                break
            if config.checkpoint_every and run.step % config.checkpoint_every == 0 and not run.done() \
                    and not bad_steps:
                save_checkpoint(run)  # not in a streak of skipped steps: the last checkpoint stays the last good one
        bar.close()
        save_checkpoint(run)
    run.processes.wait_for_everyone()  # the model is written before any process returns it
    PROCESS_GROUP_EXIT.ended_cleanly = True
    if signals.received:
        raise Interrupted(signals.received, run.step, run.out)
    return run.out / "model"


# -- setting a run up ------------------------------------------------------------------------------

def start_run(config: TrainConfig, quiet: bool) -> Run:
    """Everything before the first step: join the other processes, load the data, resume the run or start
    it (a first stage, the model config, the model, EMA and optimizer), fit --max-memory, wrap the model
    for accelerate and open the logs."""
    if config.resume:  # a flag left unset keeps the resumed run's value, not the family's default
        saved = saved_family_flags(Path(config.out))
        config = dataclasses.replace(config, **{k: v for k, v in saved.items() if getattr(config, k) is None})
    config = config.resolved()
    out = Path(config.out)
    if config.steps is None and config.minutes is None:
        raise UserError("give a budget: --steps N or --minutes M")
    family = get_family(config.model)
    processes, device = join_processes(config.device)
    quiet = quiet or not processes.is_main_process  # one progress bar and one set of messages
    checkpoint_dir = out / "checkpoint"
    if processes.is_main_process:
        restore_interrupted(checkpoint_dir)  # a crash between the two renames of a save left the last one aside
    # each machine's first process builds a data cache, then the others read it
    with processes.local_main_process_first():
        dataset = get_dataset(config.data, config.size, config.seed, config.format or None, quiet, fit=config.fit,
                              caption_column=config.caption_column)
    generator = torch.Generator().manual_seed(process_seed(config.seed, processes.process_index))
    if config.resume and not (checkpoint_dir / "state.json").is_file() and family.prepare \
            and any(out.glob("*/checkpoint/state.json")):
        config = dataclasses.replace(config, resume=False)  # stopped in its first stage: prepare continues it
    state, step, elapsed = {}, 0, 0.0
    if config.resume:
        state, model_config, step, elapsed = read_state(checkpoint_dir, config, family)
        if family.prepare:  # finish (or skip) its first stage, and take the budget that leaves
            config, _ = prepare(family, config, {}, device, quiet, saved=model_config)
        tokenizer = load_tokenizer(checkpoint_dir / "tokenizer.json", getattr(model_config, "text", None))
    else:
        if (checkpoint_dir / "state.json").is_file():
            raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        if not config.init_from:
            config, model_config, tokenizer = new_model_config(config, family, dataset, device, quiet)
    weights = None
    if config.init_from and not config.resume:  # fine-tuning: the trained model's config, tokenizer and weights
        model_config, tokenizer, weights = start_from(config, family, dataset, quiet)
    model, ema, optimizer = build_model(config, family, model_config, device, weights)
    run = Run(config, family, processes, device, quiet, dataset, generator, tokenizer, model_config, model, ema,
              optimizer, step, elapsed, state.get("warnings", []))
    if config.resume:
        load_checkpoint(run, state)
    run.empty, run.mixed = tokenizer([""]).to(device), autocast(device, config.precision)
    if config.max_memory is not None:
        run.config = fit_memory(run)
    wrap_for_processes(run)
    open_logs(run)
    return run


# What a resumed run must be given again as it was: each changes what the run computes (the random draws,
# the batches, the model), so a resume with another value would silently be another run.
SAME_ON_RESUME = {"seed": "--seed", "batch_size": "--batch-size", "preset": "--preset", "optimizer": "--optimizer",
                  "settings": "--set (or a family flag such as --text-encoder)"}


# What runs saved before a family-dependent flag existed were trained with (None: the family's default).
SAVED_BEFORE = {"optimizer": "adamw"}


def saved_family_flags(out: Path) -> dict:
    """The family-dependent flags (FAMILY_DEPENDENT) the run saved in OUT was trained with, where known; {}
    where OUT holds no readable run (read_state says why)."""
    try:
        saved = read_json(out / "checkpoint" / "state.json")["train"]
        flags = {name: saved.get(name, SAVED_BEFORE.get(name)) for name in FAMILY_DEPENDENT}
    except (UserError, KeyError, TypeError, AttributeError):
        return {}
    return {name: value for name, value in flags.items() if value is not None}


def check_same_run(saved: dict, config: TrainConfig, out: Path) -> None:
    """One line naming every setting this resume command changes from the saved run's."""
    changed = [f"{flag} {saved[name]!r} (this command: {getattr(config, name)!r})"
               for name, flag in SAME_ON_RESUME.items() if name in saved and saved[name] != getattr(config, name)]
    if changed:
        raise UserError(f"{out} was trained with " + "; ".join(changed) + ": resume with the same, or train into "
                        "a new --out (--init-from starts from its model)")


def read_state(checkpoint_dir: Path, config: TrainConfig, family: Family) -> tuple[dict, object, int, float]:
    """A resumed run's state.json, checked against this command: the state, the model config, the step
    and the elapsed training time."""
    if not (checkpoint_dir / "state.json").is_file():
        raise UserError(f"nothing to resume: no checkpoint in {checkpoint_dir}")
    state, out = read_json(checkpoint_dir / "state.json"), Path(config.out)
    try:
        if state["family"] != config.model:
            raise UserError(f"{out} holds a {state['family']} run, not {config.model}")
        saved = state["train"]
        fit = saved.get("fit", "crop")  # saved before the fit was a choice: every picture was cropped
        column = saved.get("caption_column") or ""
        if saved["size"] != config.size or saved["data"] != config.data or (fit, column) != (config.fit,
                                                                                             config.caption_column):
            raise UserError(f"{out} was trained on {saved['data']} at {saved['size']} px with --fit {fit}"
                            + (f" and --caption-column {column}" if column else "")
                            + "; resume with the same --data, --size, --fit and --caption-column")
        check_same_run(saved, config, out)
        version = int(state.get("config_version") or 1)
        if version != family.version:  # its weights and optimizer state are laid out as that version's
            raise UserError(f"{out} was saved by another dreamlet (config version {version}, this one writes "
                            f"{family.version}); its model in {out / 'model'} loads, but its training resumes "
                            "only with the dreamlet that saved it")
        model_config = family.load_config(state["model"], version)
        return state, model_config, int(state["step"]), float(state["elapsed"])
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"cannot resume from {checkpoint_dir} (left as it is): state.json is not a dreamlet "
                        f"checkpoint ({type(error).__name__}: {error}); train into a new --out") from None


def prepare(family: Family, config: TrainConfig, overrides: dict, device, quiet: bool, saved=None):
    """The family's prepare hook (a super-resolution model takes its base), and the first stage it may
    declare (dalle's image tokenizer) trained here, in its own folder of OUT; returns the family's own
    (train_config, overrides) with the budget the first stage left."""
    try:
        stage = family.prepare(config, overrides, device, quiet, saved=saved)
        if not isinstance(stage, FirstStage):
            return stage
        stage_out = Path(stage.config.out)
        if not quiet:
            print(f"stage 1 of 2: {stage.name}, into {stage_out}")
        resume = (stage_out / "checkpoint" / "state.json").is_file()  # stopped there before: continue it
        model_dir = train(dataclasses.replace(stage.config, resume=resume), quiet=quiet)
        if not quiet:
            print(f"stage 2 of 2: {stage.next_name}")
        return stage.then(model_dir)
    except Interrupted as stopped:  # a stop in the first stage is continued by `--resume --out OUT`, not OUT/stage
        raise Interrupted(stopped.signal_number, stopped.step, Path(config.out)) from None


def new_model_config(config: TrainConfig, family: Family, dataset, device, quiet: bool):
    """A new run's (train config, model config, caption tokenizer): the preset at --size with the
    captions' vocabulary, changed by --set and by the family's prepare hook (and its first stage)."""
    model_overrides = copy.deepcopy(config.settings)
    if family.prepare:  # a family that builds on another model first trains or finds it (dalle)
        config, model_overrides = prepare(family, config, model_overrides, device, quiet)
    # "small" on a GPU too: the wider "base" preset diverges at the default learning rate under bf16
    # and learns far slower per step at a lower one (docs/benchmarks.md, GPU section)
    preset = config.preset or "small"
    if preset not in family.presets:
        raise UserError(f"unknown --preset {preset!r}; choose one of: {', '.join(family.presets)}")
    tokenizer = CaptionTokenizer.train(dataset.captions(config.tokenizer_captions))
    overrides = copy.deepcopy(family.presets[preset])
    sized = {f.name for f in fields(family.config)}
    if "image_size" in sized:
        overrides["image_size"] = config.size
    if "text" in sized:  # a family that reads captions (an image tokenizer does not)
        overrides.setdefault("text", {}).update(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id)
    try:
        model_config = updated(updated(family.config(), overrides), model_overrides)
    except ValueError as error:
        raise UserError(f"--set: {error}") from None
    # or a pretrained text encoder's own tokenizer
    return config, model_config, tokenizer_for(getattr(model_config, "text", None), tokenizer)


def start_from(config: TrainConfig, family: Family, dataset, quiet: bool):
    """--init-from MODEL: its config (changed by --set), its caption tokenizer with the new captions' words
    added, and its weights, for a fresh run on new data."""
    source = Pipeline.load(config.init_from, device="cpu")
    if source.family != config.model:
        raise UserError(f"--init-from {config.init_from} is a {source.family} model; give --model {source.family}")
    if source.image_size != config.size:
        raise UserError(f"--init-from {config.init_from} draws {source.image_size} px pictures, not --size "
                        f"{config.size}")
    try:
        model_config = updated(source.model.config, copy.deepcopy(config.settings))
    except ValueError as error:
        raise UserError(f"--set: {error}") from None
    tokenizer, text = source.tokenizer, getattr(model_config, "text", None)
    if isinstance(tokenizer, CaptionTokenizer) and text is not None:  # not a pretrained encoder's own
        tokenizer, added = tokenizer.extended(dataset.captions(config.tokenizer_captions), max(4096, text.vocab_size))
        model_config = updated(model_config, {"text": {"vocab_size": tokenizer.vocab_size}})
        if not quiet:
            print(f"fine-tuning {config.init_from}: {added} new tokens for the new captions' words")
    return model_config, tokenizer, source.model.state_dict()


def load_grown(model: torch.nn.Module, weights: dict) -> None:
    """A trained model's weights into a model whose vocabulary grew: a tensor with more rows than its
    trained one (a token embedding) keeps its fresh initialisation in the new rows."""
    state = model.state_dict()
    for name, tensor in weights.items():
        if name in state and tensor.shape != state[name].shape and tensor.shape[1:] == state[name].shape[1:] \
                and tensor.shape[0] < state[name].shape[0]:
            grown = state[name].clone()
            grown[:tensor.shape[0]] = tensor
            weights = weights | {name: grown}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise UserError(f"--init-from: the weights do not fit this model ({str(error).strip().splitlines()[0]}); "
                        "is a --set changing its shape?") from None


def build_model(config: TrainConfig, family: Family, model_config, device, weights: dict | None = None):
    """The model (the same initial weights in every process, or `weights`: --init-from), its EMA copy and
    the AdamW optimizer."""
    torch.manual_seed(config.seed)  # the same initial weights in every process
    try:
        model = family.model(model_config).to(device)
    except (ValueError, TypeError) as error:  # e.g. a --set value of the wrong kind
        raise UserError(f"cannot build a {config.model} model from this config: {error}") from None
    if weights is not None:
        load_grown(model, weights)
    elif not config.resume and hasattr(model, "load_first_stage"):  # e.g. dalle's frozen image tokenizer
        model.load_first_stage()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    if hasattr(model, "param_groups"):  # e.g. a GAN: generator and discriminator, each with its own settings
        groups = model.param_groups(config.weight_decay)
    else:  # no weight decay on gains and biases
        groups = [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": config.weight_decay},
                  {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    return model, ema, make_optimizer(config.optimizer, groups, model, config.lr, betas=(0.9, 0.99))


def load_checkpoint(run: Run, state: dict) -> None:
    """Model, EMA, optimizer and this process's random stream as the checkpoint saved them."""
    try:  # a checkpoint from another dreamlet version may not fit this model: say so, keep it
        tensors = load_tensors(run.checkpoint_dir / "state.safetensors")
        run.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        run.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        load_optimizer_state(run.optimizer, {k[4:]: v.to(run.device) for k, v in tensors.items()
                                             if k.startswith("opt.")}, state["optimizer"])
        rng = "rng" if run.rank == 0 else f"rng.{run.rank}"
        if rng in tensors:  # else resumed with more processes than saved: a fresh stream for this one
            run.generator.set_state(tensors[rng])
        else:
            run.generator.manual_seed(process_seed(run.config.seed, run.rank, run.step))
    except (RuntimeError, KeyError, ValueError, OSError, UserError) as error:  # UserError: not a safetensors file
        raise UserError(f"cannot resume from {run.checkpoint_dir} (left as it is): "
                        f"{str(error).strip().splitlines()[0]}; train into a new --out") from None


def probe_loss(run: Run, module: torch.nn.Module, count: int) -> torch.Tensor:
    """For trial passes: the loss of the first `count` training pictures, with a generator of their own."""
    images, captions = run.dataset.batch(0, count)
    with run.mixed:
        return module.loss(to_tensor(images).to(run.device), run.tokenizer(captions).to(run.device), run.empty,
                           torch.Generator().manual_seed(0))


def fit_memory(run: Run) -> TrainConfig:
    """--max-memory: the config with the accumulate and checkpointing that fit the measured model."""
    config, world = run.config, run.world
    if config.accumulate != 1 or config.checkpointing:
        raise UserError("--max-memory chooses --accumulate and --checkpointing itself; give it without them")
    plan = None
    if run.main:  # measured once; every process takes the same plan (or error), or their steps would not match
        try:
            check_split(config.batch_size, 1, world)
            budget = budget_bytes(config.max_memory)
            footprint = measure_footprint(run.model, functools.partial(probe_loss, run), run.device, world)
            plan = plan_memory(footprint, config.batch_size, budget, world)
            if not run.quiet:
                tqdm.write("dreamlet: " + plan.describe(footprint, budget, config.batch_size, world))
        except UserError as error:
            plan = error
    if world > 1:
        from accelerate.utils import broadcast_object_list
        plan, = broadcast_object_list([plan])
    if isinstance(plan, UserError):
        raise plan
    return dataclasses.replace(config, accumulate=plan.accumulate, checkpointing=plan.checkpointing)


def wrap_for_processes(run: Run) -> None:
    """Activation checkpointing and torch.compile as asked, then accelerate's wrapping of loss and optimizer."""
    config = run.config
    check_split(config.batch_size, config.accumulate, run.world)
    if config.checkpointing:
        set_activation_checkpointing(run.model, True)
    if config.compile:  # each network's forward; the loss around them draws random numbers and stays eager
        for network in run.model.children():
            network.compile()
    # DistributedDataParallel averages the gradients of what runs through a module's forward: the loss, here
    unused = run.world > 1 and has_unused_parameters(run.model, functools.partial(probe_loss, run), run.device)
    run.accelerator = start_accelerator(unused)
    run.trainer, run.stepper = run.accelerator.prepare(LossForward(run.model), run.optimizer)


def open_logs(run: Run) -> None:
    """The model as a Pipeline (for grids and OUT/model), and, in the main process, the CSV log and RunLog."""
    config = run.config
    meta = {"data": config.data, "size": config.size, "train": to_dict(config), "warnings": run.warnings}
    run.pipeline = Pipeline(config.model, run.ema, run.tokenizer, meta, config.precision)
    run.grid_prompts = run.dataset.progress_prompts(12)
    run.out.mkdir(parents=True, exist_ok=True)
    run.extra_columns = list(getattr(run.model, "log_fields", ()))
    if run.main:
        start_log(run.out / "train_log.csv",
                  ["step", "loss", "lr", "images_per_s", "elapsed_s", "grad_norm"] + run.extra_columns, run.step)
        run.log = RunLog(run.out, run.step + 1 if config.resume else None, config)


def data_workers(config: TrainConfig, device: torch.device) -> int:
    # on a GPU, drawing pictures in the training thread leaves it waiting: 4 workers took the loop from 786
    # to 1487 pictures/s at 64 px, batch 128, on an H100 (docs/benchmarks.md); on a CPU the cores train
    if config.workers is not None:
        return config.workers
    return min(4, max(1, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 0


def training_bar(run: Run) -> tqdm:
    parameters = sum(p.numel() for p in run.model.parameters())
    total = run.config.steps
    return progress_bar(total=total, initial=run.step if total else 0, disable=run.quiet,
                        desc=f"train {run.config.model} {parameters / 1e6:.1f}M params",
                        bar_format="{desc}: {n_fmt}/{total_fmt} steps{postfix} [{elapsed}<{remaining}]" if total else
                        "{desc}: {n_fmt} steps{postfix} [{elapsed}]")


# -- one training step ----------------------------------------------------------------------------

def train_step(run: Run, parts: list) -> tuple[float, bool, torch.Tensor | None]:
    """Forward and backward over the step's micro-batches, clip, AdamW step, EMA: returns the step's loss,
    whether it was finite (else nothing was updated) and the gradient norm before clipping."""
    run.stepper.zero_grad(set_to_none=True)  # before the forward pass, so old gradients do not sit through it
    step_loss, finite, norm = 0.0, True, None
    for i, (images, captions) in enumerate(parts):
        images, ids = to_tensor(images).to(run.device, non_blocking=True), run.tokenizer(captions).to(run.device)
        # gradients are averaged across processes once a step, in the last micro-batch's backward pass
        with run.accelerator.no_sync(run.trainer) if i < len(parts) - 1 else contextlib.nullcontext():
            with run.mixed:
                loss = run.trainer(images, ids, run.empty, run.generator)
            if len(parts) > 1:
                loss = loss / len(parts)  # the step's gradient is the mean over its whole batch
            finite = not agree(run.processes, [not torch.isfinite(loss)])[0]  # all processes skip together
            if not finite:
                break
            run.accelerator.backward(loss)
        step_loss += loss.item()
    if finite:
        norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.config.grad_clip or float("inf"))
        finite = bool(torch.isfinite(norm))  # gradients are averaged already: the same in every process
    if finite:
        run.stepper.step()
        update_ema(run.ema, run.model, run.config.ema_decay, run.step)
    return step_loss, finite, norm


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    with torch.no_grad():  # EMA with a warmup, so early averages are not dominated by the init
        d = min(decay, (1 + step) / (10 + step))
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - d)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


# -- the periodic work ----------------------------------------------------------------------------

def log_row(run: Run, window: Window, lr: float, bar: tqdm) -> Progress:
    """The window's means as a training-log row, TensorBoard/wandb scalars and the progress bar's text,
    with the model's health warning (once each); returns the callback's Progress."""
    if run.world > 1:  # each process saw its own pictures: the batch's loss is the mean over them
        window.loss = agree(run.processes, [window.loss], "sum")[0] / run.world
    mean_loss, rate = window.loss / max(window.steps, 1), window.images / window.time
    grad_norm = window.norm / max(window.steps, 1)  # before clipping: how hard the clip works
    if run.main:
        extra = run.model.log_values() if run.extra_columns else {}
        with open(run.out / "train_log.csv", "a", newline="") as f:
            csv.writer(f, lineterminator="\n").writerow(
                [run.step, f"{mean_loss:.5f}", f"{lr:.6g}", f"{rate:.1f}", f"{run.elapsed:.1f}", f"{grad_norm:.4g}"]
                + [f"{extra.get(k, float('nan')):.4f}" for k in run.extra_columns])
        if run.log:
            run.log.scalars(dict(loss=mean_loss, lr=lr, grad_norm=grad_norm, images_per_s=rate, **extra), run.step)
        warning = run.model.health() if hasattr(run.model, "health") else None
        if warning and not any(w["message"].split(":")[0] == warning.split(":")[0] for w in run.warnings):
            run.warnings.append({"step": run.step, "message": warning})  # once each
            tqdm.write(f"dreamlet: warning at step {run.step}: {warning}")
    minutes = run.config.minutes
    left = f" {max(0.0, 60 * minutes - run.elapsed) / 60:.1f} min left" if run.config.steps is None else ""
    bar.set_postfix_str(f"loss {mean_loss:.4f} {rate:.0f} img/s{left}", refresh=False)  # shown at the next redraw
    return Progress(run.step, mean_loss, lr, rate, run.elapsed, pipeline=run.pipeline)


def progress_grid(run: Run) -> "Image.Image":
    """The EMA model's pictures of the grid prompts, into OUT/progress and TensorBoard. They draw from
    their own seeds, so drawing a grid takes nothing from training's random stream."""
    grid_dir = run.out / "progress"
    grid_dir.mkdir(exist_ok=True)
    images = run.pipeline.draw(run.grid_prompts, list(range(len(run.grid_prompts))), steps=10)
    grid = captioned_grid(images, run.grid_prompts, columns=6)
    grid.save(grid_dir / f"step_{run.step:06d}.png")
    if run.log:
        run.log.image("progress", grid, run.step)
    return grid


def stop_requested(run: Run, callback, progress: Progress | None, signals: "StopSignals") -> bool:
    """Calls the callback back (main process) and says whether the run stops at this step: a callback's stop
    or a signal to any process ends it at this step in all of them."""
    stop = False
    if run.main and callback is not None and progress is not None:
        callback(progress)
        stop = progress.stop_requested
    if run.world > 1:
        received, stop = agree(run.processes, [signals.received, stop])
        signals.received, stop = int(received), bool(stop)
    return stop


def save_checkpoint(run: Run) -> None:
    """OUT/checkpoint (model, EMA, optimizer, every process's random stream, state.json, the caption
    tokenizer), written atomically, then OUT/model. Every process calls it; the main one writes."""
    streams = [run.generator.get_state()]
    if run.world > 1:  # every process draws its own noise: all the streams are saved, for an exact resume
        from accelerate.utils import gather_object
        streams = gather_object(streams)
    if not run.main:
        return

    def write(tmp: Path):
        tensors = {f"model.{k}": v for k, v in run.model.state_dict().items()}
        tensors |= {f"ema.{k}": v for k, v in run.ema.state_dict().items()}
        opt_tensors, opt_meta = optimizer_state(run.optimizer)
        tensors |= {f"opt.{k}": v for k, v in opt_tensors.items()} | {"rng": streams[0]}
        tensors |= {f"rng.{r}": s for r, s in enumerate(streams) if r}
        save_tensors(tmp / "state.safetensors", tensors)
        save_json(tmp / "state.json", {"family": run.config.model, "step": run.step, "elapsed": run.elapsed,
                                       "train": to_dict(run.config), "config_version": run.family.version,
                                       "model": to_dict(run.model_config),
                                       "optimizer": opt_meta, "warnings": run.warnings})
        run.tokenizer.save(tmp / "tokenizer.json")
    write_dir_atomically(run.checkpoint_dir, write)
    run.pipeline.meta["trained"] = trained_facts(run.step, run.elapsed, run.world)  # for config.json and the model card
    run.pipeline.save(run.out / "model")




class LossForward(torch.nn.Module):
    """A model's `loss` as a module's forward. DistributedDataParallel synchronises the gradients of
    what runs through its wrapped module's forward, and every family trains through `loss`."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, ids, empty_ids, generator):
        return self.model.loss(images, ids, empty_ids, generator)


def join_processes(device_name: str):
    """This process's place in the run, and the device to train on. Alone, a process trains where it is
    told (`--device`, else cuda when there is one); started by `accelerate launch` or torchrun, it joins
    the others (NCCL between GPUs, gloo between CPU processes) and each takes its own GPU."""
    from accelerate import PartialState
    wanted = pick_device(device_name or None)
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1 or int(os.environ.get("WORLD_SIZE", 1)) > 1
    # `cpu` only where it matters, on launch: accelerate's state is made once per process and refuses changes
    processes = PartialState(cpu=launched and wanted.type == "cpu")
    if processes.num_processes > 1:
        PROCESS_GROUP_EXIT.register()
    return processes, (processes.device if processes.num_processes > 1 else wanted)


class ProcessGroupExit:
    """Leaves the process group at exit, after a run that ended cleanly in every process. Left to the
    interpreter's teardown, gloo's worker threads can outlive Python and abort the process (SIGABRT,
    "terminate called without an active exception") after a finished run. After a failure nothing is
    done: a process that leaves while the others wait in a collective can hang them (NCCL)."""

    def __init__(self):
        self.registered, self.ended_cleanly = False, False

    def register(self) -> None:
        self.ended_cleanly = False  # until this run ends
        if not self.registered:
            import atexit
            atexit.register(self.leave)
            self.registered = True

    def leave(self) -> None:
        import gc

        import torch.distributed as dist
        if self.ended_cleanly and dist.is_available() and dist.is_initialized():
            # DDP's reducer holds the process group, and a reference cycle can keep it (and gloo's threads) alive
            # into the interpreter's teardown past destroy_process_group: collect such garbage first
            gc.collect()
            dist.destroy_process_group()


PROCESS_GROUP_EXIT = ProcessGroupExit()


def start_accelerator(find_unused_parameters: bool):
    """accelerate's Accelerator for this run (one process: it wraps nothing). Tensors are placed by us,
    and precision stays --precision's (our autocast), whatever `accelerate launch --mixed_precision` says."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    ddp = DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
    return Accelerator(mixed_precision="no", device_placement=False, kwargs_handlers=[ddp])


def process_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of a process's random stream: the main process uses the run's seed itself, so one
    process trains exactly as before; the others draw other noise for their other pictures."""
    if rank == 0 and step == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def agree(processes, values: list, op: str = "max") -> list[float]:
    """The same numbers in every process: the largest of each (or with op="sum" the total); as they are
    in a single process. What decides the loop's path (stop, skip) must agree, or the processes hang."""
    if processes.num_processes == 1:
        return [float(v) for v in values]
    import torch.distributed as dist
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=processes.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.tolist()


def start_log(path: Path, columns: list[str], step: int) -> None:
    """Write the training log's header; on resume (step > 0) keep the rows up to the checkpoint's step,
    since a run that crashed after its last checkpoint logged steps that are now trained again. Rows
    from an older dreamlet without a newer column get "nan" there."""
    rows = []
    if step and path.exists():
        with open(path, newline="") as f:
            rows = [row for row in csv.DictReader(f) if (row.get("step") or "").isdigit() and int(row["step"]) <= step]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="nan", extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


class RunLog:
    """Where the main process sends a run's scalars and progress grids besides OUT/train_log.csv:
    TensorBoard (OUT/tensorboard) when the package is installed, and Weights & Biases when the config
    names a project (`--wandb PROJECT`). A resumed run continues the same wandb run (its id is kept in
    OUT/wandb_run_id) and, on TensorBoard, hides what a crashed run wrote after its checkpoint."""

    def __init__(self, out: Path, purge_step: int | None, config: TrainConfig):
        self.board = self.wandb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.board = SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)
        except ImportError:
            pass
        if config.wandb:
            try:
                import wandb
            except ImportError:
                raise UserError('--wandb needs the wandb package: pip install "dreamlet[wandb]" '
                                "(WANDB_MODE=offline logs without an account or a network)") from None
            id_file = out / "wandb_run_id"
            run_id = id_file.read_text().strip() if config.resume and id_file.is_file() else None
            self.wandb = wandb.init(project=config.wandb, dir=str(out), config=to_dict(config),
                                    id=run_id, resume="allow" if run_id else None)
            id_file.write_text(str(self.wandb.id))

    def scalars(self, values: dict, step: int) -> None:
        if self.board:
            for name, value in values.items():
                self.board.add_scalar(name, value, step)
        if self.wandb:
            self.wandb.log(values, step=step)

    def image(self, name: str, picture: "Image.Image", step: int) -> None:
        if self.board:
            self.board.add_image(name, np.asarray(picture.convert("RGB")), step, dataformats="HWC")
        if self.wandb:
            import wandb
            self.wandb.log({name: wandb.Image(picture)}, step=step)

    def __enter__(self):
        return self

    def __exit__(self, *exc):  # flushes the events; a wandb run is marked failed when training raised
        if self.board:
            self.board.close()
        if self.wandb:
            self.wandb.finish(exit_code=1 if exc[0] is not None else 0)


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
