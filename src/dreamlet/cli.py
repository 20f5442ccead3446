"""The `dreamlet` command: parse, dispatch, and turn user errors into one line and exit code 2."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .checkpoint import Interrupted, UserError


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dreamlet", description="Train your own text-to-image model, then draw from prompts.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"dreamlet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (add_train, add_sample, add_eval, add_compare, add_data, add_demo, add_serve):
        add(commands)
    return parser


def add_train(commands) -> None:
    """`dreamlet train`: a flag for every TrainConfig field (training.flag declares its help), the
    families' own flags, and --set for any model config field."""
    import dataclasses
    import typing
    from .data import DATASETS, FORMATS
    from .models import FAMILIES
    from .training import TrainConfig
    train = commands.add_parser("train", help="train a model on a captioned dataset")
    budget = train.add_mutually_exclusive_group()
    changed = {"model": dict(help=f"model family: {', '.join(FAMILIES)}"), "out": dict(required=True),
               "data": dict(help=f"a built-in set ({', '.join(DATASETS)}) or a path"),
               "format": dict(choices=FORMATS, default=None), "device": dict(default=None)}
    types = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        if field.name == "settings":  # --set, below
            continue
        options = {k: v for k, v in field.metadata.items()} | changed.get(field.name, {})
        kind = next(t for t in typing.get_args(types[field.name]) or (types[field.name],) if t is not type(None))
        if kind is bool:
            options |= dict(action="store_true")
        else:
            options = dict(type=kind, default=field.default) | options
        group = budget if field.name in ("minutes", "steps") else train
        group.add_argument("--" + field.name.replace("_", "-"), **options)
    for flag, names in family_flags().values():  # each family's own options (models.Flag)
        train.add_argument(f"--{flag.name}", choices=flag.choices or None, metavar=flag.metavar,
                           help=f"{', '.join(names)}: {flag.help}")
    train.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="change one model config field, e.g. --set r1=0.1 --set diffaugment=color,translation "
                            "--set dit.depth=6 (repeatable; see the family's Config)")


def family_flags() -> dict:
    """Every family's own `dreamlet train` options (their FAMILY's `flags`), by name: {name: (Flag, the
    names of the families that take it)}, in the order of `models.FAMILIES`."""
    from .models import FAMILIES, get_family
    flags: dict = {}
    for family in FAMILIES:
        for flag in get_family(family).flags:
            flags.setdefault(flag.name, (flag, []))[1].append(family)
    return flags


def add_sample(commands) -> None:
    sample = commands.add_parser("sample", help="draw pictures from prompts")
    sample.add_argument("--model", help="a model directory (RUN/model); with --from-png, the one the PNG names")
    source = sample.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-png", metavar="FILE",
                        help="draw a picture written by dreamlet sample or serve again, from the settings it carries")
    source.add_argument("--prompt", help="one prompt")
    source.add_argument("--prompts-file", help="a text file, one prompt a line")
    source.add_argument("--heldout", type=int, metavar="N",
                        help="N held-out captions of the data the model was trained on (never seen in training)")
    sample.add_argument("--num", type=int, default=1, help="pictures per prompt")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--steps", type=int, help="sampler steps (default: the model's, 20)")
    sample.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    sample.add_argument("--sampler", choices=["dpmpp_2m", "ddim"])
    sample.add_argument("--negative-prompt", metavar="TEXT",
                        help="what the pictures should not show: it takes the empty caption's place in classifier-free "
                             "guidance")
    sample.add_argument("--init-image", metavar="PATH",
                        help="image-to-image: start from this picture, noised --strength down the schedule")
    sample.add_argument("--mask", metavar="PATH",
                        help="inpainting (with --init-image): draw where this picture is light, keep the rest")
    sample.add_argument("--strength", type=float,
                        help="how far down the noise schedule the start picture goes: 0 keeps it, 1 draws anew "
                             "(default 0.8; 1 with --mask)")
    sample.add_argument("--size", type=int, help="a size the model draws at (a cascade's base size: that stage alone)")
    sample.add_argument("--out", required=True, help="output directory for PNGs and index.jsonl")
    sample.add_argument("--grid", help="also write all pictures as one captioned grid PNG here")
    sample.add_argument("--rerank", type=int, metavar="K",
                        help="draw K candidates per picture and keep the best, by --clip or else by the model's own "
                             "judgement (default: the model's, 4 for diffusion; 1 draws each picture alone)")
    sample.add_argument("--clip", help="a CLIP model directory (for --rerank and --method vqgan-clip)")
    sample.add_argument("--method", default="model", choices=["model", "vqgan-clip"],
                        help="model: the model draws; vqgan-clip: optimise a vqvae/dalle model's image codes "
                             "against --clip (--steps optimisation steps, default 100)")


def add_eval(commands) -> None:
    evaluate = commands.add_parser("eval", help="judge a model on a benchmark")
    evaluate.add_argument("--model", required=True, help="a model directory (RUN/model)")
    evaluate.add_argument("--benchmark", default="shapes", choices=["shapes"])
    evaluate.add_argument("--prompts", type=int, default=64,
                          help="shapes judge: prompts of each kind (seen, held-out, pair); with a CLIP: 3 x this "
                               "many captions; a tokenizer: 3 x this many pictures")
    evaluate.add_argument("--seeds", type=int, default=2, help="pictures per prompt")
    evaluate.add_argument("--prompt-set", choices=["evaluation", "validation"], default="evaluation",
                          help="shapes judge: the prompts figures are reported on, or those designs are chosen on")
    evaluate.add_argument("--steps", type=int)
    evaluate.add_argument("--guidance", type=float)
    evaluate.add_argument("--sampler", choices=["dpmpp_2m", "ddim"])
    evaluate.add_argument("--size", type=int)
    evaluate.add_argument("--clip",
                          help="a CLIP model directory: CLIP score, R-precision, FID and KID on held-out captions")
    evaluate.add_argument("--data",
                          help="whose held-out captions and pictures (default: the data the model trained on)")
    evaluate.add_argument("--distractors", type=int, default=32,
                          help="R-precision: wrong captions beside the right one")
    evaluate.add_argument("--inception", help="with --clip: also FID in Inception-v3 space from these local weights "
                                              "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or .safetensors "
                                              "with its keys)")
    evaluate.add_argument("--rerank", type=int, metavar="K",
                          help="judge the best of K candidates, by the --clip model (shapes; DALL-E's reranking) or "
                               "by the model's own judgement (default: as the model draws, 4 for diffusion)")
    evaluate.add_argument("--out", help="report path; writes .json and .md (default: beside the model)")


def add_compare(commands) -> None:
    compare = commands.add_parser("compare", help="eval reports of several runs in one table and plot")
    compare.add_argument("runs", nargs="+", help="run directories (with eval.json) or report .json files")
    compare.add_argument("--out", default="compare", help="writes OUT.md and OUT.png")


def add_data(commands) -> None:
    from .data import DATASETS, FITS, FORMATS
    data = commands.add_parser("data", help="look at a dataset").add_subparsers(dest="action", required=True,
                                                                                 parser_class=Parser)
    inspect = data.add_parser("inspect", help="counts, skipped records by reason, caption statistics, a contact sheet")
    inspect.add_argument("path", help=f"a built-in set ({', '.join(DATASETS)}) or a path")
    inspect.add_argument("--format", choices=FORMATS, help="the path's format (default: detected)")
    inspect.add_argument("--size", type=int, default=32, help="the size to cache the pictures at")
    inspect.add_argument("--fit", default="crop", choices=FITS,
                         help="pictures that are not square: crop or pad, as `dreamlet train --fit`")
    inspect.add_argument("--caption-column", default="", metavar="NAME",
                         help="the column that holds the captions (imagefolder metadata, parquet), as in train")
    inspect.add_argument("--sheet", help="contact sheet PNG (default: inspect.png in the current folder)")
    inspect.add_argument("--count", type=int, default=48, help="pictures on the contact sheet")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")


def add_demo(commands) -> None:
    demo = commands.add_parser("demo", help="train the default model on shapes, then sample and judge it")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--minutes", type=float, default=12.0)
    demo.add_argument("--steps", type=int, help="a step budget instead of minutes (for quick checks)")
    demo.add_argument("--prompts", type=int, default=64, help="benchmark prompts of each kind")
    demo.add_argument("--resume", action="store_true")


def add_serve(commands) -> None:
    serve = commands.add_parser("serve", help="a local web page and JSON API: draw from models, watch runs train")
    serve.add_argument("--model", action="append", default=[], help="a model directory (repeatable: side by side)")
    serve.add_argument("--run", action="append", default=[], help="a run directory to watch train (repeatable)")
    serve.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--max-images", type=int, default=8, help="pictures per request")
    serve.add_argument("--max-steps", type=int, default=100, help="sampler steps per request")
    serve.add_argument("--max-prompt-chars", type=int, default=500)
    serve.add_argument("--queue", type=int, default=8, help="requests that may wait while one draws; more get 429")
    serve.add_argument("--timeout", type=float, default=60.0, help="seconds a request may wait to start; then 503")
    serve.add_argument("--max-body-bytes", type=int, default=8 << 20, help="a request body larger than this gets 413")
    serve.add_argument("--out", default="runs/serve", help="where every picture drawn is kept (the page's history)")
    serve.add_argument("--token", help="a secret every request must carry (also DREAMLET_TOKEN); needed when --host "
                                       "is not a loopback address")


def run_train(args) -> None:
    import dataclasses
    from .training import TrainConfig, train
    check_train_numbers(args)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file, not a directory")
    from .models import get_family, listed
    get_family(args.model)  # fail on a bad name before any work
    settings = parse_settings(args.set)
    for flag, names in family_flags().values():  # a family's own options set fields of its config
        value = getattr(args, flag.name.replace("-", "_"))
        if not value:
            continue
        if args.model not in names:
            raise UserError(f"--{flag.name} is for --model {listed(names, 'and')}")
        set_field(settings, flag.field, str(Path(value).resolve()) if flag.path else value)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "settings"}
    config = TrainConfig(**given | dict(format=args.format or "", device=args.device or "", settings=settings))
    model_dir = train(config)
    from accelerate import PartialState
    if PartialState().is_main_process:  # launched as several processes, one line, not one per process
        print(f"model: {model_dir}")


# The numbers a training flag may take: (low, high, whether low itself is allowed), checked before any work.
TRAIN_NUMBERS = {"seed": (0, 2 ** 32 - 1, True), "steps": (1, None, True), "batch_size": (1, None, True),
                 "size": (1, None, True), "accumulate": (1, None, True), "minutes": (0, None, False),
                 "workers": (0, None, True), "max_memory": (0, None, False), "lr": (0, None, False),
                 "warmup": (0, None, True), "min_lr_ratio": (0, 1, True), "weight_decay": (0, None, True),
                 "grad_clip": (0, None, True), "ema_decay": (0, 1, True), "log_every": (1, None, True),
                 "tokenizer_captions": (1, None, True), "max_bad_steps": (1, None, True),
                 "sample_every": (0, None, True), "checkpoint_every": (0, None, True)}

# Far beyond any real run, in every command: a typed extra digit is refused before it asks for a batch, a
# picture, a vocabulary or a drawing that fills memory or never ends.
SANE_MAXIMUM = {"steps": 10 ** 9, "batch_size": 65536, "size": 4096, "accumulate": 65536, "minutes": 10 ** 6,
                "workers": 256, "lr": 10, "warmup": 10 ** 9, "tokenizer_captions": 10 ** 8, "num": 10000,
                "rerank": 1000, "prompts": 100000, "seeds": 1000, "distractors": 100000, "heldout": 100000,
                "count": 100000, "guidance": 100}


def check_sane(args) -> None:
    """One line for a number larger than any run needs, in any command's options (NaN and the lower
    bounds are each command's own checks)."""
    for name, highest in SANE_MAXIMUM.items():
        value = getattr(args, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > highest:
            raise UserError(f"--{name.replace('_', '-')} must be at most {highest}, not {value}")


def check_train_numbers(args) -> None:
    import math
    for name, (low, high, closed) in TRAIN_NUMBERS.items():
        value = getattr(args, name)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        too_high = high is not None and value > high
        if not math.isfinite(value) or value < low or (value == low and not closed) or too_high:
            bounds = f"between {low} and {high}" if high is not None else (
                f"at least {low}" if closed else ("positive" if low == 0 else f"more than {low}"))
            raise UserError(f"{flag} must be {bounds}, not {value}")


def parse_settings(settings: list[str]) -> dict:
    """["dit.depth=6", "diffaugment=color"] -> {"dit": {"depth": 6}, "diffaugment": "color"} (values read as JSON
    where they parse, else as text)."""
    import json
    overrides: dict = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep or not name:
            raise UserError(f"--set {setting!r}: expected FIELD=VALUE")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        set_field(overrides, name, value)
    return overrides


def set_field(overrides: dict, name: str, value) -> None:
    """overrides["a"]["b"] = value for the dotted field name "a.b"."""
    *parents, leaf = name.split(".")
    for parent in parents:
        overrides = overrides.setdefault(parent, {})
    overrides[leaf] = value


PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def check_picture_name(flag: str, path: str | None) -> None:
    """A picture the command will write must be named as one (Pillow picks the format from the name), and
    not be a folder."""
    if path is not None and (Path(path).suffix.lower() not in PICTURE_SUFFIXES or Path(path).is_dir()):
        raise UserError(f"{flag} {path}: name a picture file to write ({', '.join(PICTURE_SUFFIXES)})")


def run_sample(args) -> None:
    from .sample import read_prompts, sample, sample_again
    check_picture_name("--grid", args.grid)
    if args.from_png is not None:
        records = sample_again(args.from_png, args.out, args.model)
        print(f"{records[0]['file']} in {args.out}: {records[0]['prompt']!r}, seed {records[0]['seed']}")
        return
    if args.model is None:
        raise UserError("--model is required (or --from-png FILE)")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file, not a directory")
    if args.heldout is not None:
        prompts = heldout_prompts(args.model, args.heldout)
    else:
        prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts_file)
    records = sample(args.model, prompts, args.out, num=args.num, seed=args.seed, steps=args.steps,
                     guidance=args.guidance, size=args.size, sampler=args.sampler, rerank=args.rerank, clip=args.clip,
                     method=args.method, negative=args.negative_prompt, init_image=args.init_image, mask=args.mask,
                     strength=args.strength)
    if args.grid:
        import numpy as np
        from PIL import Image
        from .images import captioned_grid
        images = np.stack([np.asarray(Image.open(Path(args.out) / r["file"])) for r in records])
        Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
        captioned_grid(images, [r["prompt"] for r in records], columns=8).save(args.grid)
        print(f"grid: {args.grid}")
    print(f"{len(records)} pictures in {args.out} (index: {Path(args.out) / 'index.jsonl'})")


def heldout_prompts(model_dir: str, count: int) -> list[str]:
    """Captions the model never trained on, from the data it was trained on."""
    from .checkpoint import read_json
    from .data import load
    from .data.shapes import benchmark_prompts
    if count < 1:
        raise UserError("--heldout must be at least 1")
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        raise UserError(f"no model in {model_dir} (expected {config_file})")
    train = read_json(config_file).get("train", {})
    data = train.get("data", "shapes")
    if data == "shapes":
        return [p.text for p in benchmark_prompts(0, count, 0, seed=5)]
    dataset = load(data, train.get("size", 32), format=train.get("format") or None, fit=train.get("fit", "crop"),
                   caption_column=train.get("caption_column") or "")
    if not len(dataset.heldout_index):
        raise UserError(f"{data} holds nothing out (fewer than 100 pictures); give --prompt or --prompts-file")
    return dataset.heldout(count)[1]


def run_eval(args) -> None:
    from .evaluation import evaluate_shapes, evaluate_with_clip, write_report
    from .models import get_family
    from .pipeline import Pipeline
    if args.prompts < 1 or args.distractors < 1 or args.seeds < 1:
        raise UserError("--prompts, --seeds and --distractors must be at least 1")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be at least 1, not {args.steps}")
    pipeline = Pipeline.load(args.model).at_size(args.size)  # --size: a cascade's stage
    family = get_family(pipeline.family)
    if family.evaluate:  # its own evaluation (a CLIP on real pictures, an image tokenizer's reconstructions)
        report, line = family.evaluate(args, pipeline)
        print(line)
    elif args.clip and args.rerank in (None, 1):
        report = evaluate_with_clip(args.model, args.clip, args.data, count=3 * args.prompts,
                                    distractors=args.distractors, steps=args.steps, guidance=args.guidance,
                                    sampler=args.sampler, pipeline=pipeline, inception=args.inception,
                                    rerank=args.rerank)
        print(f"CLIP score {report['clip_score']:.1f} (real {report['clip_score_real']:.1f}), R-precision "
              f"{report['r_precision']:.3f} (real {report['r_precision_real']:.3f}), FID {report['fid']:.1f}, "
              f"KID {report['kid']:.3f}")
        if "judge" in report:
            print_accuracy(report["judge"])
    else:
        report = evaluate_shapes(args.model, prompts=args.prompts, seeds=args.seeds, steps=args.steps,
                                 guidance=args.guidance, sampler=args.sampler, size=args.size, pipeline=pipeline,
                                 rerank=args.rerank, clip=args.clip, prompt_set=args.prompt_set)
        print_accuracy(report)
    out = args.out or str(Path(args.model).parent / "eval")
    json_path, md_path = write_report(report, out)
    print(f"report: {json_path} and {md_path}")
    if json_path.resolve() == (Path(args.model).parent / "eval.json").resolve():  # the model card shows it
        from .card import write_card
        from .checkpoint import read_json
        write_card(Path(args.model), read_json(Path(args.model) / "config.json"))


def run_data(args) -> None:
    import json
    from .data import load
    from .data.inspect import describe, inspect
    if args.path == "shapes":
        raise UserError("shapes is drawn on the fly and has nothing to inspect; try emoji, digits or a path")
    if args.count < 1:
        raise UserError("--count must be at least 1")
    check_picture_name("--sheet", args.sheet)
    dataset = load(args.path, args.size, format=args.format, fit=args.fit, caption_column=args.caption_column)
    report = inspect(dataset, args.sheet or "inspect.png", args.count)
    print(json.dumps(report, indent=2) if args.json else describe(report))


def run_compare(args) -> None:
    from .compare import compare
    _, md_path, png_path = compare(args.runs, args.out)
    print(md_path.read_text(), end="")
    print(f"table: {md_path}\nplot:  {png_path}")


def print_accuracy(report: dict) -> None:
    parts = [f"{label} {100 * report[k]:.1f} %" for k, label in
             (("seen", "seen single"), ("heldout", "held-out single"), ("pair", "pair")) if k in report]
    print("accuracy: " + ", ".join(parts))
    print("attributes: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in report["attributes"].items()))


def run_demo(args) -> None:
    from .data.shapes import benchmark_prompts
    from .evaluation import evaluate_shapes, write_report
    from .images import captioned_grid
    from .pipeline import Pipeline
    from .training import TrainConfig, train
    out = Path(args.out)
    if args.prompts < 1 or (args.steps is not None and args.steps < 1) or not args.minutes > 0:
        raise UserError("--prompts and --steps must be at least 1 and --minutes positive")
    budget = dict(steps=args.steps) if args.steps is not None else dict(minutes=args.minutes)
    resume = args.resume or (out / "checkpoint" / "state.json").is_file()
    if resume:
        print(f"continuing the run in {out}")
    started = time.perf_counter()
    model_dir = train(TrainConfig(out=str(out), resume=resume, **budget))
    trained = time.perf_counter() - started
    pipeline = Pipeline.load(model_dir)
    shown = benchmark_prompts(8, 8, 8, seed=7)
    images = pipeline.pictures([p.text for p in shown], list(range(len(shown))))  # as the model draws by default
    captioned_grid(images, [f"{p.text} ({'held-out' if p.kind == 'heldout' else p.kind})" for p in shown],
                   columns=8).save(out / "samples.png")
    report = evaluate_shapes(model_dir, prompts=args.prompts, seeds=2, pipeline=pipeline)
    json_path, md_path = write_report(report, out / "eval")
    print(f"\ntrained for {trained / 60:.1f} min")
    print_accuracy(report)
    print(f"model:    {model_dir}  (config.json, model.safetensors, tokenizer.json)")
    print(f"samples:  {out / 'samples.png'}")
    print(f"judge:    {json_path} and {md_path}")
    print(f"log:      {out / 'train_log.csv'}  (progress grids in {out / 'progress'})")
    print(f"next:     dreamlet sample --model {model_dir} --prompt \"a large red circle at the top left\" "
          f"--out {out / 'mine'}")


def run_serve(args) -> None:
    from .serve import Limits, serve
    limits = Limits(args.max_images, args.max_steps, args.max_prompt_chars, args.queue, args.timeout,
                    args.max_body_bytes)
    serve(args.model, args.run, args.host, args.port, limits, args.out, args.token)


COMMANDS = {"train": run_train, "sample": run_sample, "eval": run_eval, "data": run_data, "compare": run_compare,
            "demo": run_demo, "serve": run_serve}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        check_sane(args)
        COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that went away shows here, not in a traceback at exit
    except BrokenPipeError:  # whoever read the output stopped (`dreamlet eval ... | head`): nothing is wrong here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's own flush stays quiet
        return 141  # as a shell reports a command stopped by SIGPIPE
    except UserError as error:
        print(f"dreamlet: error: {error}", file=sys.stderr)
        return 2
    except Interrupted as stopped:
        print(f"dreamlet: stopped by {stopped}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        print("dreamlet: interrupted (the last checkpoint is kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
