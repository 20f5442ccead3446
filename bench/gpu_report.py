"""Writes docs/benchmarks.md's GPU section from bench/results/gpu.json (what bench/gpu.py and
bench/gpu_quality.sh measured on a lent GPU; this machine has none, so the figures are stored).

    .venv/bin/python bench/gpu_report.py
"""
from __future__ import annotations

import json
from pathlib import Path

from docs_section import write_section

ROOT = Path(__file__).resolve().parents[1]


def main():
    r = json.loads((ROOT / "bench" / "results" / "gpu.json").read_text())
    pct = lambda v: f"{100 * v:.0f} %"  # noqa: E731
    lines = [f"Measured {r['date']} on one {r['gpu']} ({r['cpu_cores']} CPU cores), torch {r['torch']}, CUDA {r['cuda']}, "
             "bf16 autocast. Stored in bench/results/gpu.json; the commands are in bench/gpu.py and bench/gpu_quality.sh.",
             "", "**Quality in 3-4 minutes** (shapes 32 px, `dreamlet train --minutes 3` unless the flags say 4, then `dreamlet eval --prompts 64`, "
             "64 canonical prompts of each kind x 2 seeds; runs in one call shared the GPU, so their step counts are lower "
             "than a run alone gets):", "",
             "| flags | steps | train img/s | seen single | held-out single | pair | s/picture | conditions |",
             "|---|---|---|---|---|---|---|---|"]
    for q in r["quality"]:
        if "failed" in q:
            lines.append(f"| `{q['flags'] or '(defaults)'}` | {q['steps']} | {q['images_per_s']:.0f} | {q['failed']} | | | | {q['note']} |")
        else:
            lines.append(f"| `{q['flags'] or '(defaults)'}` | {q['steps']} | {q['images_per_s']:.0f} | {pct(q['seen'])} "
                         f"| {pct(q['heldout'])} | {pct(q['pair'])} | {q['seconds_per_image']:.4f} | {q['note']} |")
    lines += ["", "**Training throughput and model FLOPs utilisation** (diffusion at 64 px; the training step alone: "
              "forward, backward and fused AdamW on pictures already on the GPU; FLOPs counted by torch's "
              "FlopCounterMode; MFU against the H100's 989 TFLOP/s dense bf16):", "",
              "| preset | parameters | batch | step | img/s | GFLOP per picture (fwd + bwd) | MFU | peak allocated |",
              "|---|---|---|---|---|---|---|---|"]
    for preset, t in r["throughput"].items():
        for row in t["rows"]:
            lines.append(f"| {preset} | {t['parameters'] / 1e6:.1f} M | {row['batch']} | {row['step_ms']:.0f} ms "
                         f"| {row['images_per_s']:.0f} | {row['gflops_per_picture']:.1f} | {100 * row['mfu']:.1f} % "
                         f"| {row['peak_allocated_gib']:.2f} GiB |")
    loops = "; ".join(f"{p}: {t['train_loop']['images_per_s_last']:.0f} img/s" for p, t in r["throughput"].items())
    shapes = max(t["shapes_images_per_s_cpu"] for t in r["throughput"].values())
    lines += ["", f"The whole `dreamlet.train` loop at 64 px, batch 128 ({loops}) runs at a third of the step alone: "
              f"the shapes are drawn on the CPU in the same thread ({shapes:.0f} pictures/s, about 50 ms of every "
              "128-picture step), and the step itself is bound by kernel launches (the same ~50-70 ms for 64 to 256 "
              "pictures), so MFU stays in single digits: these models are small for an H100.", ""]
    if "loop" in r:
        lines += [f"**The whole loop with pictures drawn ahead** (`--workers N`, {r['loop']['steps']} steps of "
                  f"`dreamlet train` each, `{r['loop']['command']}`; 32 px batch 32 unless the flags say otherwise; the "
                  "wall time includes start-up and, with `--compile`, compiling):", "",
                  "| flags | img/s at the end | wall |", "|---|---|---|"]
        lines += [f"| `{row['flags']}` | {row['images_per_s']:.0f} | {row['wall_s']:.0f} s |" for row in r["loop"]["rows"]]
        lines += ["", "At 32 px and batch 32 the step's kernel launches are the limit and workers change nothing; at "
                  "64 px and batch 128 four workers give 1.9 times the pictures per second, which is why a GPU run now "
                  "starts up to 4 by default (0 on a CPU, whose cores are busy training). `--compile` adds another 11 % "
                  "once compiled, after a minute of compiling.", ""]
    c = r["cascade"]
    d = c["cascade_draw"]
    lines += ["**The 64 -> 256 super-resolution stage fits 12 GB**: `dreamlet.train(model=\"diffusion-sr\", size=256, "
              "preset=\"base\", max_memory=12, base=<a 64 px base>)` with the process capped at 12 GiB of the card "
              "(`torch.cuda.set_per_process_memory_fraction`), on 256 px captioned pictures (the shapes set's 128 px "
              "renders upscaled):", "",
              "| stage | parameters | planner's choice | peak allocated | peak reserved | train img/s |",
              "|---|---|---|---|---|---|",
              f"| SR 64 -> 256, base preset | {c['parameters'] / 1e6:.1f} M | batch {c['batch']} in {c['accumulate']} "
              f"micro-batch(es), checkpointing {'on' if c['checkpointing'] else 'off'} | {c['peak_allocated_gib']:.2f} GiB "
              f"| {c['peak_reserved_gib']:.2f} GiB | {c['images_per_s']:.0f} |",
              "", f"The same stage without the planner or the cap (batch 32): {c['unplanned_batch32_peak_allocated_gib']:.2f} GiB "
              f"allocated, {c['unplanned_batch32_peak_reserved_gib']:.2f} GiB reserved. Drawing the whole cascade "
              f"(64 px base + 256 px stage, {d['pictures']} pictures): {d['seconds_per_picture']:.3f} s a picture, "
              f"{d['peak_allocated_gib']:.2f} GiB peak.", "",
              "**Every family on CUDA** (40 training steps each with the `base` preset, then drawing two prompts; "
              "`bench/gpu.py --parts families`): "
              + "; ".join(f"{name}: {'ok' if 'error' not in f else f['error']} ({f.get('train_s', '?')} s)"
                          for name, f in r["families"].items())
              + ". The first GPU run found vqvae and dalle failing under bf16 autocast (the codebook's EMA was fed a "
              "bf16 matrix product); fixed, and tests/test_bf16.py now trains every family under bf16 autocast on the "
              "CPU, which converts the same operators."]
    write_section("gpu", "On a GPU (H100)", "\n".join(lines))


if __name__ == "__main__":
    main()
