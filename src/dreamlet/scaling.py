"""Scaling a run past one process and past memory: what the training loop needs besides `accelerate`.

- `micro_batches`: which part of a step's global batch each process and micro-step trains on, so
  that N processes, or N accumulated micro-batches, see the very pictures one process would;
  `step_batches` draws them, in worker processes ahead of the step when asked (`--workers`).
- `checkpointed`: activation checkpointing for a model's blocks, switched on by a flag the loop sets
  on every module (`--checkpointing`); a model opts in by calling its blocks through it.
- `measure_footprint` and `plan_memory`: the `--max-memory` planner. Weights, EMA and AdamW moments
  are counted; activations and gradients are measured by running one forward and backward pass of
  two small micro-batches on the target device, then extrapolated (they grow linearly with the batch).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import checkpoint

from .checkpoint import UserError

GiB = 2 ** 30


def micro_batches(step: int, batch_size: int, accumulate: int = 1, rank: int = 0,
                  world: int = 1) -> list[tuple[int, int]]:
    """(start, count) in the data stream of each micro-batch process `rank` of `world` trains on at `step`.

    The global batch is always items step * batch_size ... (step + 1) * batch_size - 1, cut into
    accumulate x world equal slices; process r takes slices r, r + world, r + 2 world ... So the data
    order does not depend on how many processes or micro-batches share the work."""
    size = batch_size // (accumulate * world)
    return [(step * batch_size + (i * world + rank) * size, size) for i in range(accumulate)]


class StepBatches(torch.utils.data.IterableDataset):
    """Each step's micro-batches from step `first` on, as (pictures, captions) pairs: what the loop
    would draw itself. With DataLoader workers, worker w of n draws steps first + w, first + w + n ...
    and the loader takes them in turn, so the order (and an exact resume) is the same with any count."""

    def __init__(self, dataset, first: int, batch_size: int, accumulate: int, rank: int, world: int):
        super().__init__()
        self.dataset, self.first = dataset, first
        self.split = (batch_size, accumulate, rank, world)

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        step, stride = (self.first + worker.id, worker.num_workers) if worker else (self.first, 1)
        while True:
            yield [self.dataset.batch(start, count) for start, count in micro_batches(step, *self.split)]
            step += stride


def step_batches(dataset, first: int, batch_size: int, accumulate: int, rank: int, world: int, workers: int):
    """An endless iterator of each step's micro-batches; `workers` > 0 draws them in that many
    processes ahead of the training step (worth it on a GPU, where drawing pictures on the CPU in the
    training thread would leave the GPU waiting; on a CPU the cores are busy training already)."""
    stream = StepBatches(dataset, first, batch_size, accumulate, rank, world)
    if workers <= 0:
        return iter(stream)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4,
                                         collate_fn=lambda parts: parts, persistent_workers=False)
    return iter(loader)


def check_split(batch_size: int, accumulate: int, world: int) -> None:
    if accumulate < 1:
        raise UserError("--accumulate must be at least 1")
    if batch_size % (accumulate * world):
        split = f"{accumulate} micro-batches" + (f" x {world} processes" if world > 1 else "")
        raise UserError(f"--batch-size {batch_size} does not split evenly into {split}; "
                        f"choose a batch size divisible by {accumulate * world}")


def has_unused_parameters(model: nn.Module, loss_for, device: torch.device) -> bool:
    """Whether a training pass leaves a trainable parameter without a gradient (vqgan's discriminator
    before it starts). DistributedDataParallel must then search for such parameters every step, a
    pass over the autograd graph; it is asked to only for models that need it. Tried on a copy, with
    its own random state (`loss_for(module, m)`: the loss of m pictures)."""
    probe = copy.deepcopy(model).train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        loss_for(probe, 2).backward()
    return any(p.grad is None for p in probe.parameters() if p.requires_grad)


# ---------------------------------------------------------------- activation checkpointing

def checkpointed(block: nn.Module, *args):
    """block(*args); when the loop has set `block.activation_checkpointing` and gradients are on, only
    the inputs are kept and the block's activations are computed again in the backward pass: a
    transformer block's memory for about a third more compute. Non-reentrant checkpointing, which
    works with DDP, torch.compile and inputs that need no gradient."""
    if getattr(block, "activation_checkpointing", False) and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def set_activation_checkpointing(model: nn.Module, on: bool) -> None:
    """Set the flag on every module, so a model checks it wherever it calls `checkpointed`."""
    for module in model.modules():
        module.activation_checkpointing = on


# ---------------------------------------------------------------- the memory planner

class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensors created inside the `with` block while they are alive (a CPU has no
    `torch.cuda.max_memory_allocated`). Every operator's outputs are seen here, forward and backward,
    including a checkpointed block's recomputation; a storage counts from the operator that allocated
    it until its last tensor is gone. Views and in-place results share an input's storage and are not
    new memory, so the weights (allocated before) are never counted."""

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak = {}, 0, 0   # storage id -> (weak reference, bytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:  # freed since the last operator
            self.now -= self.live.pop(key)[1]
        inputs = {storage_id(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            key = storage_id(tensor)
            if key is None or key in inputs or key in self.live:
                continue
            storage = tensor.untyped_storage()
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        return out


def storage_id(tensor: torch.Tensor) -> int | None:
    try:
        return tensor.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # a tensor without storage of its own
        return None


def peak_bytes(run, device: torch.device) -> int:
    """Peak memory `run()` adds on `device`: the CUDA allocator's own count on a GPU, else LiveTensorBytes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with LiveTensorBytes() as counter:
        run()
    return counter.peak


@dataclass
class Footprint:
    """What one process of a run needs: `static` bytes whatever the batch (weights, the EMA copy, AdamW's
    two moments, DDP's gradient buckets), `gradients` (one set), and for a forward and backward pass
    `fixed + per_picture * m` bytes of activations and temporaries for a micro-batch of m pictures,
    with and without activation checkpointing."""
    static: int
    gradients: int
    fixed: dict           # {checkpointing (bool): bytes}
    per_picture: dict     # {checkpointing (bool): bytes}
    device: str

    def bytes(self, micro_batch: int, checkpointing: bool) -> float:
        """The peak of a training step in micro-batches of `micro_batch` pictures. The gradients count
        in full through the passes: they do in an accumulated step, and in a single pass they fill up
        while the activations drain, so this errs on the safe side by at most one set of them."""
        passes = self.gradients + self.fixed[checkpointing] + self.per_picture[checkpointing] * micro_batch
        # the optimizer steps after the activations are gone: the gradients and, on a GPU, about as much
        # again for AdamW's foreach temporaries
        step = self.gradients * (2 if self.device == "cuda" else 1)
        return self.static + max(passes, step)

    @property
    def checkpointing_helps(self) -> bool:  # a model whose blocks do not call `checkpointed` gains nothing
        return self.per_picture[True] < 0.9 * self.per_picture[False]


def measure_footprint(model: nn.Module, loss_for, device: torch.device, world: int = 1,
                      probes: tuple[int, int] = (2, 4)) -> Footprint:
    """Measure `model` (on `device`) training: `loss_for(module, m)` returns the loss of a micro-batch of
    m pictures. Runs on a copy, with its own random state, so the run being planned is left exactly as
    it was (a vqvae's codebook, the loop's generator and the global RNG included)."""
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    # the model and its EMA copy, AdamW's exp_avg and exp_avg_sq, and DDP's gradient buckets
    static = 2 * weights + 2 * trainable + (trainable if world > 1 else 0)
    probe = copy.deepcopy(model).train()
    fixed, per_picture = {}, {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        def one_pass(m) -> int:
            # The gradients exist before the pass (as in an accumulated step), so the peak it adds is
            # activations and temporaries alone, which grow in step with the batch; counted from none,
            # small probes would measure the gradients filling up instead, and extrapolate too little.
            for p in probe.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
            peak = peak_bytes(lambda: loss_for(probe, m).backward(), device)
            probe.zero_grad(set_to_none=True)
            return peak

        for on in (False, True):
            set_activation_checkpointing(probe, on)
            one_pass(probes[0])  # warm up: one-time allocations (kernels' workspaces) are not activations
            small, large = (one_pass(m) for m in probes)
            per_picture[on] = max(0.0, (large - small) / (probes[1] - probes[0]))
            fixed[on] = max(0.0, small - per_picture[on] * probes[0])
    del probe
    return Footprint(static, trainable, fixed, per_picture, device.type)


@dataclass
class Plan:
    accumulate: int
    checkpointing: bool
    micro_batch: int
    estimate: float       # bytes, per process

    def describe(self, footprint: Footprint, budget: float, batch_size: int, world: int) -> str:
        processes = f" on each of {world} processes" if world > 1 else ""
        return (f"memory plan for {budget / GiB:g} GiB{processes}: batch {batch_size} as {self.accumulate} micro-batch"
                f"{'es' if self.accumulate > 1 else ''} of {self.micro_batch}, activation checkpointing "
                f"{'on' if self.checkpointing else 'off'}; estimated peak {self.estimate / GiB:.3g} GiB "
                f"({footprint.static / GiB:.3g} weights, EMA and AdamW; measured on {footprint.device})")


HEADROOM = 1.1     # the allocator's fragmentation and what the estimate misses
MIN_MICRO = 8      # below this a micro-batch leaves a GPU idle, and checkpointing is the cheaper saving


def plan_memory(footprint: Footprint, batch_size: int, budget: float, world: int = 1) -> Plan:
    """The fastest way to train `batch_size` pictures a step within `budget` bytes per process: the
    fewest micro-batches without checkpointing while a micro-batch keeps at least MIN_MICRO pictures,
    then checkpointing (about a third more compute) with the fewest micro-batches. The global batch
    never changes, so the learning rate and schedule tuned for it still hold."""
    per_process = batch_size // world
    splits = [a for a in range(1, per_process + 1) if per_process % a == 0]
    plain = [(a, False) for a in splits if per_process // a >= min(MIN_MICRO, per_process)]
    rest = [(a, footprint.checkpointing_helps) for a in splits]  # checkpointing only where it saves memory
    for accumulate, on in plain + rest:
        estimate = footprint.bytes(per_process // accumulate, on)
        if estimate * HEADROOM <= budget:
            return Plan(accumulate, on, per_process // accumulate, estimate)
    smallest = footprint.bytes(1, footprint.checkpointing_helps)
    raise UserError(f"--max-memory {budget / GiB:g} GiB is too small: even 1 picture per micro-batch"
                    f"{' with activation checkpointing' if footprint.checkpointing_helps else ''} needs about "
                    f"{smallest * HEADROOM / GiB:.3g} GiB ({footprint.static / GiB:.3g} for weights, EMA and AdamW); "
                    f"try a smaller --preset or --size")


def budget_bytes(gib: float) -> float:
    if not (gib > 0 and math.isfinite(gib)):
        raise UserError(f"--max-memory must be a positive number of GiB, not {gib}")
    return gib * GiB
