"""dreamlet against the projects users would pick instead (issue 10): each peer installed from PyPI in a
virtual environment of its own, trained on the same shapes stream for the same wall-clock budget,
sampled on the same canonical prompts and seeds and judged by the same exact judge, beside dreamlet's
rows for the same family (diffusion for the Imagen peers, dalle for dalle-pytorch), with
dreamlet/peer ratios for accuracy and training images/s. Writes bench/results/peers.json and its
section of docs/benchmarks.md.

    .venv/bin/python bench/peers.py [--peers imagen dalle minimagen] [--minutes 15] [--with-dreamlet]
                                    [--jobs 2] [--quick]

The environment (default runs/peers-venv) is made with `python -m venv` and gets torch==2.13.0 (the CPU
build here: an unpinned torch would pull the CUDA build), each peer pinned with `--no-deps` and the
dependencies it imports (not torchvision: see bench/peer_runner.py, `without_torchvision`); dreamlet is
not installed there, the runner imports its data, tokenizer and judge from this checkout's src/.
By default dreamlet's rows are the stored ones in bench/results/families.json (the table says which
date each came from); `--with-dreamlet` trains dreamlet's diffusion and dalle in the same invocation,
under the same conditions, through bench/families.py (rows kept apart from families.json).
`--jobs 2` runs one family at a time, each peer beside its dreamlet counterpart, so both see the same load.
`--quick` (8 prompts of each kind x 1 seed) is a smoke test: it writes only under --out.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

from docs_section import write_section  # noqa: E402

# name -> what to install (pinned versions that installed and ran here), the dreamlet row it is compared
# with, and the runner's constructor settings. Dependencies are the ones each package imports, minus
# torchvision; every install is constrained to torch==2.13.0.
PEERS = {
    "imagen": dict(package="imagen-pytorch", pins=["imagen-pytorch==2.1.0"],
                   deps=["accelerate", "beartype", "click", "datasets", "einops>=0.7", "ema-pytorch", "fsspec", "kornia",
                         "packaging", "pydantic>=2", "pytorch-warmup", "sentencepiece", "tqdm", "transformers"],
                   against="diffusion"),
    # taming-transformers-rom1504 (imported by dalle_pytorch.vae) requires torchvision, so it is pinned without
    # deps too; its code needs pytorch-lightning 1.x, and dalle_pytorch's __init__ needs pkg_resources
    "dalle": dict(package="dalle-pytorch", pins=["dalle-pytorch==1.6.6", "taming-transformers-rom1504==0.0.6"],
                  deps=["axial-positional-embedding", "rotary-embedding-torch", "einops>=0.3.2", "omegaconf", "pyyaml",
                        "pytorch-lightning==1.9.5", "setuptools<81", "ftfy", "regex", "requests", "tqdm"],
                  against="dalle"),
    "minimagen": dict(package="minimagen", pins=["minimagen==0.0.9"],
                      deps=["einops", "einops-exts", "resize-right", "transformers", "tqdm"],
                      against="diffusion"),
}
RUNNER_DEPS = ["numpy", "scipy", "pillow", "tokenizers"]  # dreamlet's shapes, judge and caption tokenizer
TORCH = "torch==2.13.0"
DREAMLET = {"diffusion": "text-conditional diffusion (DiT, CFG)", "dalle": "VQ codes + decoder-only transformer"}


# ----------------------------------------------------------------------------- the environment

def ensure_venv(venv: Path, peers: list[str]) -> Path:
    """The peers' environment, installed once per requirement set (a stamp records what is in it)."""
    python = venv / "bin" / "python"
    wanted = dict(torch=TORCH, runner=RUNNER_DEPS, peers={p: PEERS[p] for p in sorted(peers)})
    digest = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]
    stamps = venv / "dreamlet-peers-installed"
    if python.exists() and stamps.is_dir() and all((stamps / f"{p}-{digest}").exists() for p in peers):
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + [TORCH], check=True)
    subprocess.run(pip + ["-c", str(constraints)] + RUNNER_DEPS, check=True)
    stamps.mkdir(exist_ok=True)
    for name in peers:
        spec = PEERS[name]
        subprocess.run(pip + ["-c", str(constraints)] + spec["deps"], check=True)
        subprocess.run(pip + ["--no-deps"] + spec["pins"], check=True)
        (stamps / f"{name}-{digest}").write_text(json.dumps(spec))
    return python


# ----------------------------------------------------------------------------- running

def run_jobs(jobs: list[dict], parallel: int) -> None:
    """Each job {label, cmd, log}: at most `parallel` at once, in order; a failed job is reported, not fatal."""
    waiting, running = list(jobs), []
    while waiting or running:
        while waiting and len(running) < parallel:
            job = waiting.pop(0)
            job["log"].parent.mkdir(parents=True, exist_ok=True)
            print(f"[peers] start {job['label']}: {' '.join(map(shlex.quote, map(str, job['cmd'])))} "
                  f"(log: {job['log']})", flush=True)
            job["proc"] = subprocess.Popen(job["cmd"], stdout=open(job["log"], "w"), stderr=subprocess.STDOUT,
                                           cwd=ROOT)
            job["started"] = time.time()
            running.append(job)
        time.sleep(2)
        for job in list(running):
            if job["proc"].poll() is not None:
                running.remove(job)
                job["rc"] = job["proc"].returncode
                print(f"[peers] {job['label']} finished with code {job['rc']} after "
                      f"{(time.time() - job['started']) / 60:.1f} min", flush=True)


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def dreamlet_params(family: str) -> int | None:
    """Parameters of dreamlet's default (`small`) model of a family at 32 px, built as training builds it
    (the frozen image tokenizer inside a dalle model counts, as the VAE inside dalle-pytorch's DALLE does)."""
    try:
        sys.path.insert(0, str(ROOT / "src"))
        from dreamlet.data.shapes import ShapesDataset
        from dreamlet.models import get_family
        from dreamlet.text.tokenizer import CaptionTokenizer
        module = get_family(family)
        tokenizer = CaptionTokenizer.train(ShapesDataset(32).captions(20_000))
        config = module.config()
        config.text.vocab_size, config.text.pad_id = tokenizer.vocab_size, tokenizer.pad_id
        return sum(p.numel() for p in module.model(config).parameters())
    except Exception as error:  # noqa: BLE001 - a count is a nicety; the table says "-" without it
        print(f"[peers] could not count dreamlet {family} parameters: {error}", flush=True)
        return None


# ----------------------------------------------------------------------------- the table

def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def ratio(ours, theirs, percent: bool = True) -> str:
    """dreamlet / peer, written so a zero on either side reads plainly."""
    if ours is None or theirs is None:
        return "-"
    if theirs == 0:
        return "- (both 0 %)" if ours == 0 and percent else ("-" if ours == 0 else
                                                             f"- (peer 0{' %' if percent else ''})")
    value = ours / theirs
    return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def params_text(n) -> str:
    return "-" if not n else f"{n / 1e6:.1f} M"


def against(peer_row: dict, dreamlet_rows: list[dict]) -> dict | None:
    """The dreamlet row a peer is compared with: its family's, measured in the same run when there is one."""
    family = PEERS.get(peer_row.get("peer"), {}).get("against")
    rows = [r for r in dreamlet_rows if r["name"] == family]
    return next((r for r in rows if r.get("source") == "same run"), rows[0] if rows else None)


def table(peer_rows: list[dict], dreamlet_rows: list[dict]) -> str:
    """The markdown for docs/benchmarks.md: every row side by side, then dreamlet/peer ratios, then sources.
    A dreamlet row has `source` "same run" (trained by this benchmark beside the peers) or "stored"
    (bench/results/families.json, measured by bench/families.py under its own conditions)."""
    lines = ["| model | params | budget | steps x batch | train img/s | seen single | held-out single | pair | colour "
             "| shape | size | position | relation | drawing | s/picture |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def label(r):
        if "version" in r:
            return f"{r['name']} {r['version']}"
        return f"dreamlet {r['name']}" + (" (same run)" if r.get("source") == "same run" else " (stored)")

    ordered = [r for r in dreamlet_rows if r.get("source") == "same run"] + peer_rows + \
              [r for r in dreamlet_rows if r.get("source") != "same run"]
    for r in ordered:
        a = r.get("attributes", {})
        name = (f"{label(r)}: {r['what']}" if "version" in r
                else f"**{label(r)}**: {DREAMLET.get(r['name'], r['name'])}")
        drawing = r.get("drawing") or {"one forward pass": "one forward pass",
                                       "autoregressive": "code by code, KV cache"}.get(
            r.get("sampler"), f"{r.get('sample_steps')} {r.get('sampler')} steps")
        lines.append(f"| {name} | {params_text(r.get('params'))} | {r['budget_minutes']:g} min | {r['steps']} x {r['batch']} "
                     f"| {r['images_per_s']:.0f} | {pct(r['seen'])} | {pct(r['heldout'])} | {pct(r['pair'])} "
                     f"| {pct(a.get('color'))} | {pct(a.get('shape'))} | {pct(a.get('size'))} | {pct(a.get('position'))} "
                     f"| {pct(a.get('relation'))} | {drawing} | {r['seconds_per_image']:.4f} |")
    lines += ["", "dreamlet / peer, same family (above 1: dreamlet ahead; the dreamlet row of the same run where there is "
              "one):", "",
              "| dreamlet vs peer | seen single | held-out single | pair | train img/s | s/picture (peer / dreamlet) |",
              "|---|---|---|---|---|---|"]
    for r in peer_rows:
        ours = against(r, dreamlet_rows)
        if not ours:
            continue
        lines.append(f"| {label(ours)} vs {label(r)} | {ratio(ours['seen'], r['seen'])} "
                     f"| {ratio(ours['heldout'], r['heldout'])} | {ratio(ours['pair'], r['pair'])} "
                     f"| {ratio(ours['images_per_s'], r['images_per_s'], percent=False)} "
                     f"| {ratio(r['seconds_per_image'], ours['seconds_per_image'], percent=False)} |")
    lines += ["", "Where each row comes from (date, machine, command, prompts x seeds, conditions):", ""]
    for r in ordered:
        conditions = (f"nice {r['nice']}, load average {r['load_at_start']} at its start" if "nice" in r
                      else r.get("conditions", "as bench/families.py ran it"))
        lines.append(f"- {label(r)}: {r['measured']}, {r['machine']}; `{r['command']}`; {r['prompts']} prompts of "
                     f"each kind x {r['seeds']} seed(s); {conditions}")
    return "\n".join(lines)


def load_dreamlet_rows(path: Path, names: list[str], source: str) -> list[dict]:
    rows = {r["name"]: r for r in (json.loads(path.read_text()) if path.exists() else [])}
    return [dict(rows[n], source=source) for n in names if n in rows]


# ----------------------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", nargs="+", default=["imagen", "dalle"], choices=list(PEERS))
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="8 prompts of each kind x 1 seed; writes only under --out")
    parser.add_argument("--with-dreamlet", action="store_true",
                        help="also train dreamlet's diffusion and dalle now (bench/families.py), for ratios from one run")
    parser.add_argument("--jobs", type=int, default=1,
                        help="trainings at once; above 1, one family at a time: its peers beside dreamlet's row")
    parser.add_argument("--threads", type=int, help="torch threads in every training process")
    parser.add_argument("--set", action="append", default=[], metavar="PEER.KEY=VALUE",
                        help="a peer's runner setting, e.g. --set imagen.sample_steps=50")
    parser.add_argument("--venv", default=str(ROOT / "runs" / "peers-venv"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "peers"))
    parser.add_argument("--reuse", action="store_true", help="table the results already under --out, train nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.seeds = 8, 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "bench/peers.py"] + [shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])])
    env_threads = ["--threads", str(args.threads)] if args.threads else []

    families = sorted({PEERS[p]["against"] for p in args.peers}, key=list(DREAMLET).index)
    jobs = []
    if not args.reuse:
        python = ensure_venv(Path(args.venv), args.peers)
        for family in families if args.with_dreamlet else []:
            cmd = [sys.executable, BENCH / "families.py", "--families", family, "--minutes", str(args.minutes),
                   "--prompts", str(args.prompts), "--seeds", str(args.seeds), "--out", out / "dreamlet",
                   "--store", out / f"dreamlet-{family}.json"]
            jobs.append(dict(label=f"dreamlet {family}", cmd=[str(c) for c in cmd], log=out / f"dreamlet-{family}.log",
                             family=family))
        for peer in args.peers:
            settings = [s.split(".", 1)[1] for s in args.set if s.startswith(peer + ".")]
            cmd = [python, BENCH / "peer_runner.py", peer, "--minutes", str(args.minutes), "--prompts", str(args.prompts),
                   "--seeds", str(args.seeds), "--out", out / peer] + env_threads
            cmd += [a for s in settings for a in ("--set", s)]
            jobs.append(dict(label=peer, cmd=[str(c) for c in cmd], log=out / f"{peer}.log", peer=peer))
        if args.threads:
            os.environ["OMP_NUM_THREADS"] = str(args.threads)
        if args.jobs > 1:  # a family's group at a time: each peer trains beside its dreamlet counterpart
            for family in families:
                run_jobs([j for j in jobs if (j.get("family") or PEERS[j.get("peer", "imagen")]["against"]) == family],
                         args.jobs)
        else:
            run_jobs(jobs, 1)

    store = ROOT / "bench" / "results" / "peers.json"
    stored = json.loads(store.read_text()) if store.exists() and not args.quick else {}
    # the command that trained a row: this one, or (with --reuse) the one recorded when it was trained
    recorded = {(kind, r["name"]): r.get("command") for kind in ("peers", "dreamlet") for r in stored.get(kind, [])
                if kind == "peers" or r.get("source") == "same run"}
    trained_now = {j.get("peer") or j.get("family") for j in jobs if j.get("rc") == 0}
    peer_rows, failed = [], {}
    for peer in args.peers:
        result = out / peer / "result.json"
        job = next((j for j in jobs if j.get("peer") == peer), None)
        if result.exists() and (job is None or job.get("rc") == 0):
            row = json.loads(result.read_text())
            row["command"] = command if peer in trained_now else recorded.get(("peers", row["name"])) or command
            peer_rows.append(row)
        else:
            log = tail(out / f"{peer}.log", lines=3)
            killed = log and "Error" not in log and "Traceback" not in log
            failed[PEERS[peer]["package"]] = ("no result; the run ended without an error (killed from outside), "
                                              f"its log ends: {log}" if killed else log or "no result")
    if args.with_dreamlet:
        same_run = []
        for family in families:
            same_run += load_dreamlet_rows(out / f"dreamlet-{family}.json", [family], "same run")
        for row in same_run:
            row["command"] = (command if row["name"] in trained_now
                              else recorded.get(("dreamlet", row["name"])) or command)
            row["conditions"] = "trained by this benchmark beside the peers (bench/families.py --store)"
    else:  # the dreamlet rows an earlier run of this benchmark trained beside the peers, if any
        same_run = [r for r in stored.get("dreamlet", []) if r.get("source") == "same run"]
    dreamlet_rows = same_run + load_dreamlet_rows(ROOT / "bench" / "results" / "families.json", list(DREAMLET), "stored")
    counts = {}
    for row in dreamlet_rows:
        if not row.get("params"):
            row["params"] = counts.setdefault(row["name"], dreamlet_params(row["name"]))
    text = table(peer_rows, dreamlet_rows)
    print(text)
    for package, why in failed.items():
        print(f"[peers] failed: {package}: {why}", flush=True)
    (out / "peers.md").write_text(text + "\n")
    if args.quick:
        return
    rows = {r["name"]: r for r in stored.get("peers", [])}
    rows |= {r["name"]: r for r in peer_rows}
    earlier = stored.get("failed") if isinstance(stored.get("failed"), dict) else {}
    failed = {k: v for k, v in earlier.items() if k not in rows} | failed
    store.parent.mkdir(exist_ok=True)
    store.write_text(json.dumps(dict(peers=list(rows.values()), dreamlet=dreamlet_rows, failed=failed), indent=2))
    intro = ["Each peer is installed from PyPI into a virtual environment of its own by `bench/peers.py` (torch==2.13.0, "
             "the CPU build; versions in each row), trained on dreamlet's shapes stream at 32 px (batch i is items "
             "i x B to i x B + B - 1, as dreamlet trains) for the same wall-clock budget, then drawn for the same "
             "canonical prompts and seeds and judged by the same exact judge. *Same run*: dreamlet trained by the same "
             "invocation under the same conditions (the ratios use these rows); *stored*: the rows of the families "
             "table above, measured by bench/families.py on its own.", ""]
    tables = [table(list(rows.values()), dreamlet_rows)]
    if failed:
        tables += ["", "Peers that did not run to the end:", ""] + [f"- {k}: {v}" for k, v in failed.items()]
    write_section("peers", "Against the peers (shapes, 32 px, same budget, same judge)", "\n".join(intro + tables))


if __name__ == "__main__":
    main()
