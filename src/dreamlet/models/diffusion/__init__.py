"""Text-conditional diffusion: the family declaration and the migrations of its saved configs."""
from __future__ import annotations

from ...checkpoint import UserError
from .. import Family, Flag
from .model import PRESETS, DiffusionConfig, TextToImageDiffusion

TEXT_ENCODER_FLAG = Flag("text-encoder", "text.pretrained", metavar="DIR", path=True,
                         help="a frozen pretrained text encoder from a local transformers directory (T5, CLIP text, "
                              "BERT-like) instead of one trained from scratch")

# Version 1 held every experiment of the first seven rounds (docs/benchmarks.md keeps their figures);
# version 2 (dreamlet 0.2) holds the default design only. Commit d5bd8fb is the last that loads the others.
REMOVED = "an option removed in dreamlet 0.2 (docs/benchmarks.md has its figures); dreamlet at commit d5bd8fb loads it"


def require(condition: bool, what: str) -> None:
    if not condition:
        raise UserError(f"this model was trained with {what}, {REMOVED}")


def v1_dit(config: dict, layout: bool) -> dict:
    """Version 1's DiT settings checked against what version 2 builds, and the network's own fields."""
    require(config.pop("network", "dit") == "dit", "network=unet")
    config.pop("unet", None)
    dit = config.get("dit") or {}
    require(dit.get("text_mode", "cross") == "cross", "dit.text_mode=joint")
    require(dit.get("pooled_text", True), "dit.pooled_text=false")
    require(dit.get("conv_width", 64) > 0, "dit.conv_width=0")
    require(dit.get("channels", 3) == 3, f"dit.channels={dit.get('channels')}")
    require((dit.get("layout_rank", 32) > 0) == layout, f"dit.layout_rank={dit.get('layout_rank', 32)}")
    require(config.pop("self_condition", False) is False, "self_condition")
    require(config.pop("guidance_schedule", "constant") == "constant", "guidance_schedule=linear")
    above = config.pop("dynamic_threshold_above", 5.0)
    if config.get("guidance", 3.0) <= above:  # it drew with static clipping at its own guidance
        config["dynamic_threshold"] = 0.0
    config.setdefault("image_size", dit.get("image_size", 32))
    keep = ("patch", "width", "depth", "heads", "mlp_ratio", "text_width", "time_width", "conv_width")
    config["dit"] = {k: v for k, v in dit.items() if k in keep}
    return removed_text_fields(config)


def removed_text_fields(config: dict) -> dict:
    (config.get("text") or {}).pop("token_std", None)
    return config


def diffusion_v2(config: dict) -> dict:
    """The caption preview moves out of the DiT into its own config; the experiments go."""
    dit = dict(config.get("dit") or {})
    # the defaults of version 1 where a field is missing: its DiffusionConfig default wrote the preview's
    require(dit.get("layout_input", "attention") == "attention" and dit.get("layout_preview", 1.0) > 0
            and dit.get("preview_residual", True), "no caption preview (a model from before the seventh round)")
    config = v1_dit(config, layout=True)
    config["preview"] = dict(rank=dit.get("layout_rank", 32), heads=4, weight=dit.get("layout_preview", 1.0),
                             power=dit.get("preview_power", 8.0))
    return config


def diffusion_v3(config: dict) -> dict:
    """Version 3 draws the best of 4 candidates by default (`rerank`); a model saved before draws one, as it did."""
    return config | {"rerank": 1}


def diffusion_v4(config: dict) -> dict:
    """Version 4 guides less below t = 0.6 by default (`guidance_detail`); a model saved before keeps constant
    guidance, as it drew."""
    return config | {"guidance_detail": 1.0}


# Muon for the transformer blocks (dreamlet/optimizer.py): on shapes, time-matched with AdamW, pairs +8 and +10 points
# in two seeds on the validation prompts, and on emoji's held-out captions no worse (docs/benchmarks.md, fifteenth
# round). The other families keep AdamW until they are measured with it.
TRAIN_DEFAULTS = dict(optimizer="muon")

FAMILY = Family(
    "diffusion", DiffusionConfig, TextToImageDiffusion, PRESETS, flags=(TEXT_ENCODER_FLAG,), edits=True, steps=True,
    train_defaults=TRAIN_DEFAULTS,
    version=4, migrations={1: diffusion_v2, 2: diffusion_v3, 3: diffusion_v4},
    renames={1: {f"net.layout_{old}": f"preview.{new}" for old, new in [
        ("in", "pooled"), ("queries", "queries"), ("kv", "kv"), ("null", "null"), ("read", "read"),
        ("out", "to_tokens"), ("preview", "to_picture")]}})
