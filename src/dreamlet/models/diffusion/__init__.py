from .. import Family, Flag, removed
from .model import PRESETS, DiffusionConfig, TextToImageDiffusion

TEXT_ENCODER_FLAG = Flag("text-encoder", "text.pretrained", metavar="DIR", path=True,
                         help="a frozen pretrained text encoder from a local transformers directory (T5, CLIP text, "
                              "BERT-like) instead of one trained from scratch")
FAMILY = Family("diffusion", DiffusionConfig, TextToImageDiffusion, PRESETS, flags=(TEXT_ENCODER_FLAG,), version=2,
                migrations={1: lambda config: removed(config, "text.token_std")})
