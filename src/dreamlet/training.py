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
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import (Interrupted, UserError, load_optimizer_state, load_tensors, optimizer_state, read_json,
                         restore_interrupted, save_json, save_tensors, write_dir_atomically)
from .config import from_dict, to_dict, updated
from .data import get_dataset
from .images import captioned_grid, to_tensor
from .models import get_family
from .pipeline import Pipeline, autocast, pick_device
from .scaling import (budget_bytes, check_split, has_unused_parameters, measure_footprint, step_batches,
                      plan_memory, set_activation_checkpointing)
from .text.tokenizer import CaptionTokenizer, load_tokenizer, tokenizer_for


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
    preset: str = "small"          # model size preset: small (the tuned default, CPU and GPU), base, tiny
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
    accumulate: int = 1            # micro-batches per step: each of batch_size / accumulate pictures, one update
    checkpointing: bool = False    # activation checkpointing: recompute blocks in the backward pass (less memory, ~30 % slower)
    compile: bool = False          # torch.compile the model's networks (off by default: slower on CPU, docs/benchmarks.md)
    max_memory: float | None = None  # GiB per process: measure the model, then choose accumulate and checkpointing to fit
    wandb: str = ""                # a Weights & Biases project to log to as well ("" : TensorBoard and CSV only)
    workers: int | None = None     # processes drawing the next steps' pictures ahead (None: up to 4 on a GPU, 0 on a CPU)

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


def train(config: TrainConfig, callback=None, quiet: bool = False) -> Path:
    """Train a model as `config` says and write OUT/model (EMA weights, config, tokenizer); returns that
    directory. `callback(progress)` is called as training goes (see Progress); Ctrl-C, SIGTERM and
    `progress.stop()` all end the run with a checkpoint saved, ready for `resume=True`. Launched as
    several processes, every process calls this and trains; the main one alone writes and calls back."""
    config = config.resolved()
    out = Path(config.out)
    if config.steps is None and config.minutes is None:
        raise UserError("give a budget: --steps N or --minutes M")
    family_name, family = config.model, get_family(config.model)
    processes, device = join_processes(config.device)
    world, rank, main = processes.num_processes, processes.process_index, processes.is_main_process
    quiet = quiet or not main  # one progress bar and one set of messages
    checkpoint_dir = out / "checkpoint"
    if main:
        restore_interrupted(checkpoint_dir)  # a crash between the two renames of a save left the last one aside
    with processes.local_main_process_first():  # each machine's first process builds a data cache, then the others read it
        dataset = get_dataset(config.data, config.size, config.seed, config.format or None, quiet)
    generator = torch.Generator().manual_seed(process_seed(config.seed, rank))
    step, elapsed = 0, 0.0

    def prepare(*args, **kwargs):  # a stop in the first stage is continued by `--resume --out OUT`, not OUT/stage
        try:
            return family.prepare(*args, **kwargs)
        except Interrupted as stopped:
            raise Interrupted(stopped.signal_number, stopped.step, out) from None

    if config.resume and not (checkpoint_dir / "state.json").is_file() and family.prepare \
            and any(out.glob("*/checkpoint/state.json")):
        config = dataclasses.replace(config, resume=False)  # stopped in its first stage: prepare continues it
    if config.resume:
        if not (checkpoint_dir / "state.json").is_file():
            raise UserError(f"nothing to resume: no checkpoint in {checkpoint_dir}")
        state = read_json(checkpoint_dir / "state.json")
        try:
            if state["family"] != family_name:
                raise UserError(f"{out} holds a {state['family']} run, not {family_name}")
            saved = state["train"]
            if saved["size"] != config.size or saved["data"] != config.data:
                raise UserError(f"{out} was trained on {saved['data']} at {saved['size']} px; resume with the same --data and --size")
            model_config = family.load_config(state["model"], state.get("config_version"))
            step, elapsed = int(state["step"]), float(state["elapsed"])
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"cannot resume from {checkpoint_dir} (left as it is): state.json is not a dreamlet "
                            f"checkpoint ({type(error).__name__}: {error}); train into a new --out") from None
        if family.prepare:  # finish (or skip) its first stage, and take the budget that leaves
            config, _ = prepare(config, {}, device, quiet, saved=model_config)
        tokenizer = load_tokenizer(checkpoint_dir / "tokenizer.json", model_config.text)
    else:
        if (checkpoint_dir / "state.json").is_file():
            raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        model_overrides = copy.deepcopy(config.settings)
        if family.prepare:  # a family that builds on another model first trains or finds it (dalle)
            config, model_overrides = prepare(config, model_overrides, device, quiet)
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
        overrides.setdefault("text", {}).update(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id)
        try:
            model_config = updated(updated(family.config(), overrides), model_overrides)
        except ValueError as error:
            raise UserError(f"--set: {error}") from None
        tokenizer = tokenizer_for(model_config.text, tokenizer)  # or a pretrained text encoder's own

    torch.manual_seed(config.seed)  # the same initial weights in every process
    try:
        model = family.model(model_config).to(device)
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
            rng = "rng" if rank == 0 else f"rng.{rank}"
            if rng in tensors:  # else resumed with more processes than saved: a fresh stream for this one
                generator.set_state(tensors[rng])
            else:
                generator.manual_seed(process_seed(config.seed, rank, step))
        except (RuntimeError, KeyError, ValueError, OSError, UserError) as error:  # UserError: not a safetensors file
            raise UserError(f"cannot resume from {checkpoint_dir} (left as it is): "
                            f"{str(error).strip().splitlines()[0]}; train into a new --out") from None

    empty = tokenizer([""]).to(device)
    mixed = autocast(device, config.precision)

    def probe_loss(module, count):  # for trial passes: the first training pictures, and a generator of their own
        images, captions = dataset.batch(0, count)
        with mixed:
            return module.loss(to_tensor(images).to(device), tokenizer(captions).to(device), empty,
                               torch.Generator().manual_seed(0))

    if config.max_memory is not None:
        if config.accumulate != 1 or config.checkpointing:
            raise UserError("--max-memory chooses --accumulate and --checkpointing itself; give it without them")
        plan = None
        if main:  # measured once; every process takes the same plan (or error), or their steps would not match
            try:
                check_split(config.batch_size, 1, world)
                budget = budget_bytes(config.max_memory)
                footprint = measure_footprint(model, probe_loss, device, world)
                plan = plan_memory(footprint, config.batch_size, budget, world)
                if not quiet:
                    tqdm.write("dreamlet: " + plan.describe(footprint, budget, config.batch_size, world))
            except UserError as error:
                plan = error
        if world > 1:
            from accelerate.utils import broadcast_object_list
            plan, = broadcast_object_list([plan])
        if isinstance(plan, UserError):
            raise plan
        config = dataclasses.replace(config, accumulate=plan.accumulate, checkpointing=plan.checkpointing)
    check_split(config.batch_size, config.accumulate, world)
    if config.checkpointing:
        set_activation_checkpointing(model, True)
    if config.compile:  # each network's forward; the loss around them draws random numbers and stays eager
        for network in model.children():
            network.compile()
    # DistributedDataParallel averages the gradients of what runs through a module's forward: the loss, here
    accelerator = start_accelerator(world > 1 and has_unused_parameters(model, probe_loss, device))
    trainer, stepper = accelerator.prepare(LossForward(model), optimizer)

    warnings = state.get("warnings", []) if config.resume else []  # what went wrong in training, kept with the model
    meta = {"data": config.data, "size": config.size, "train": to_dict(config), "warnings": warnings}
    pipeline = Pipeline(family_name, ema, tokenizer, meta, config.precision)
    preview = dataset.preview_captions(12)
    log_path = out / "train_log.csv"
    out.mkdir(parents=True, exist_ok=True)
    extra_columns = list(getattr(model, "log_fields", ()))
    board = None
    if main:
        start_log(log_path, ["step", "loss", "lr", "images_per_s", "elapsed_s", "grad_norm"] + extra_columns, step)
        board = RunLog(out, step + 1 if config.resume else None, config)
    parameters = sum(p.numel() for p in model.parameters())

    def save_checkpoint():
        streams = [generator.get_state()]
        if world > 1:  # every process draws its own noise: all the streams are saved, for an exact resume
            from accelerate.utils import gather_object
            streams = gather_object(streams)
        if not main:
            return

        def write(tmp: Path):
            tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
            tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
            opt_tensors, opt_meta = optimizer_state(optimizer)
            tensors |= {f"opt.{k}": v for k, v in opt_tensors.items()} | {"rng": streams[0]}
            tensors |= {f"rng.{r}": s for r, s in enumerate(streams) if r}
            save_tensors(tmp / "state.safetensors", tensors)
            save_json(tmp / "state.json", {"family": family_name, "step": step, "elapsed": elapsed,
                                           "train": to_dict(config), "config_version": family.version,
                                           "model": to_dict(model_config),
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
    window_loss, window_norm, window_steps, window_images, window_time = 0.0, 0.0, 0, 0, 0.0
    bad_steps = 0
    # on a GPU, drawing pictures in the training thread leaves it waiting: 4 workers took the loop from 786
    # to 1487 pictures/s at 64 px, batch 128, on an H100 (docs/benchmarks.md); on a CPU the cores train
    workers = config.workers if config.workers is not None else \
        (min(4, max(1, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 0)
    batches = step_batches(dataset, step, config.batch_size, config.accumulate, rank, world, workers)
    with StopSignals() as signals, board or contextlib.nullcontext():  # the writer closes (flushes) on the way out
        while not done() and not signals.received:
            started = time.perf_counter()
            lr = learning_rate(config, step, budget_progress())
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            stepper.zero_grad(set_to_none=True)  # before the forward pass, so old gradients do not sit through it
            parts = next(batches)
            step_loss, finite = 0.0, True
            for i, (images, captions) in enumerate(parts):
                images, ids = to_tensor(images).to(device, non_blocking=True), tokenizer(captions).to(device)
                # gradients are averaged across processes once a step, in the last micro-batch's backward pass
                with accelerator.no_sync(trainer) if i < len(parts) - 1 else contextlib.nullcontext():
                    with mixed:
                        loss = trainer(images, ids, empty, generator)
                    if len(parts) > 1:
                        loss = loss / len(parts)  # the step's gradient is the mean over its whole batch
                    finite = not agree(processes, [not torch.isfinite(loss)])[0]  # all processes skip together
                    if not finite:
                        break
                    accelerator.backward(loss)
                step_loss += loss.item()
            if finite:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or float("inf"))
                finite = bool(torch.isfinite(norm))  # gradients are averaged already: the same in every process
            if not finite:  # skip the update (the data still moves on), and stop if it keeps happening
                bad_steps += 1
                if main:
                    tqdm.write(f"dreamlet: warning: non-finite loss or gradient at step {step}; step skipped")
                if bad_steps >= config.max_bad_steps:
                    bar.close()
                    raise UserError(f"{bad_steps} non-finite losses in a row at step {step}; lower --lr "
                                    f"(the last checkpoint, in {checkpoint_dir}, is kept)")
            else:
                bad_steps = 0
                stepper.step()
                with torch.no_grad():  # EMA with a warmup, so early averages are not dominated by the init
                    d = min(config.ema_decay, (1 + step) / (10 + step))
                    for e, p in zip(ema.parameters(), model.parameters()):
                        e.lerp_(p, 1 - d)
                    for e, b in zip(ema.buffers(), model.buffers()):
                        e.copy_(b)
                window_loss, window_norm, window_steps = window_loss + step_loss, window_norm + float(norm), window_steps + 1
            step += 1
            spent = time.perf_counter() - started
            elapsed += spent
            if world > 1:  # a time budget ends at the same step in every process: the slowest clock counts
                elapsed, = agree(processes, [elapsed])
            window_images, window_time = window_images + config.batch_size, window_time + spent
            progress = None
            if step % config.log_every == 0 or done():
                if world > 1:  # each process saw its own pictures: the batch's loss is the mean over them
                    window_loss = agree(processes, [window_loss], "sum")[0] / world
                mean_loss, rate = window_loss / max(window_steps, 1), window_images / window_time
                grad_norm = window_norm / max(window_steps, 1)  # before clipping: how hard the clip works
                if main:
                    extra = model.log_values() if extra_columns else {}
                    with open(log_path, "a", newline="") as f:
                        csv.writer(f, lineterminator="\n").writerow(
                            [step, f"{mean_loss:.5f}", f"{lr:.6g}", f"{rate:.1f}", f"{elapsed:.1f}", f"{grad_norm:.4g}"]
                            + [f"{extra.get(k, float('nan')):.4f}" for k in extra_columns])
                    if board:
                        board.scalars(dict(loss=mean_loss, lr=lr, grad_norm=grad_norm, images_per_s=rate, **extra), step)
                    warning = model.health() if hasattr(model, "health") else None
                    if warning and not any(w["message"].split(":")[0] == warning.split(":")[0] for w in warnings):  # once each
                        warnings.append({"step": step, "message": warning})
                        tqdm.write(f"dreamlet: warning at step {step}: {warning}")
                left = f" {max(0.0, 60 * config.minutes - elapsed) / 60:.1f} min left" if total is None else ""
                bar.set_postfix_str(f"loss {mean_loss:.4f} {rate:.0f} img/s{left}")
                progress = Progress(step, mean_loss, lr, rate, elapsed, pipeline=pipeline)
                window_loss, window_norm, window_steps, window_images, window_time = 0.0, 0.0, 0, 0, 0.0
            bar.update(1)
            if main and config.sample_every and step % config.sample_every == 0 and not done() \
                    and getattr(model, "generates", True):
                grid_dir = out / "progress"
                grid_dir.mkdir(exist_ok=True)
                images = pipeline.draw(preview, list(range(len(preview))), steps=10)
                grid = captioned_grid(images, preview, columns=6)
                grid.save(grid_dir / f"step_{step:06d}.png")
                if board:
                    board.image("progress", grid, step)
                progress = progress or Progress(step, float("nan"), lr, float("nan"), elapsed, pipeline=pipeline)
                progress.grid = grid
            stop = False
            if main and callback is not None and progress is not None:
                callback(progress)
                stop = progress.stop_requested
            if world > 1:  # a callback's stop or a signal to any process ends the run at this step in all of them
                received, stop = agree(processes, [signals.received, stop])
                signals.received, stop = int(received), bool(stop)
            if stop:
                break
            if config.checkpoint_every and step % config.checkpoint_every == 0 and not done() and not bad_steps:
                save_checkpoint()  # not in a streak of skipped steps: the last checkpoint stays the last good one
        bar.close()
        save_checkpoint()
    processes.wait_for_everyone()  # the model is written before any process returns it
    if signals.received:
        raise Interrupted(signals.received, step, out)
    return out / "model"


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
    return processes, (processes.device if processes.num_processes > 1 else wanted)


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
                raise UserError("--wandb needs the wandb package: pip install wandb "
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
