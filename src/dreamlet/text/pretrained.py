"""A frozen pretrained text encoder from local files, beside the one dreamlet trains from scratch.

Imagen's finding (Saharia et al. 2022) is that a large frozen language model reading the caption
helps more than a larger image model. `dreamlet train --text-encoder DIR` takes one from a
transformers model directory on disk (a T5 encoder, a CLIP text model, a sentence-transformers or
other BERT-like model; nothing is downloaded): its last hidden state passes through a learned
linear projection to the diffusion model's text width, and that is all of the text path that trains.

The encoder is kept out of the model's module tree on purpose, in a cache keyed by directory and
device: its weights are then not in the optimizer, not in the EMA copy and not in model.safetensors.
The model's config records the directory, so a model whose encoder has gone fails to load in one
line. The caption tokenizer is the encoder's own (PretrainedTokenizer, with CaptionTokenizer's
interface), saved as the model directory's tokenizer.json. Needs `transformers`:
`pip install "dreamlet[pretrained]"`.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from tokenizers import Tokenizer

from ..checkpoint import UserError
from .tokenizer import TokenizerFile

# Padding in token id tensors. Not the encoder's own pad token: CLIP pads with its end-of-text token,
# which is also a real token, so only an id outside every vocabulary marks padding unambiguously.
PAD = -1

# Encoder-decoder families whose encoder alone reads the caption (AutoModel would build the decoder too).
ENCODER_ONLY = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise UserError('a pretrained text encoder needs the transformers package: '
                        'pip install "dreamlet[pretrained]"') from None
    return transformers


def check_directory(path: str, weights: bool = False) -> None:
    """One line for a folder that is not an encoder dreamlet reads: no config.json, or (`weights`) its
    weights only as pickles (.bin, .pt: unpickling runs whatever code they hold, so they are never read)."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UserError(f"text encoder not found: {path} has no config.json (a frozen encoder is not saved with "
                        f"the model, so the directory it was trained with must stay)")
    if weights and not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise UserError(f"--text-encoder {path}: no .safetensors weights" + (
            f" ({', '.join(pickles)} is a pickle, which dreamlet never unpickles; convert it with "
            "transformers: AutoModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True))"
            if pickles else ""))


@functools.lru_cache(maxsize=4)
def frozen_encoder(path: str, device: str) -> nn.Module:
    """The encoder in `path` on `device`, loaded once, in eval mode and fp32 with gradients off."""
    check_directory(path, weights=True)
    transformers = import_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(path)
        if config.model_type in ENCODER_ONLY:
            kind = getattr(transformers, ENCODER_ONLY[config.model_type])
        elif config.model_type.startswith("clip"):  # a whole CLIP or its text half: the text model
            kind = transformers.CLIPTextModel
        else:
            kind = transformers.AutoModel
        # Loading must not move the global random state: a second, cached load would not, and the
        # projection built next would then start differently.
        with torch.random.fork_rng(devices=[]):
            model = kind.from_pretrained(path, use_safetensors=True)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:  # a damaged file among them
        raise UserError(f"cannot load the text encoder in {path}: {str(error).strip().splitlines()[0]}") from None
    return model.float().to(device).eval().requires_grad_(False)


class PretrainedTextEncoder(nn.Module):
    """TextEncoder's interface over a frozen encoder: ids (B, L) -> tokens (B, L, D), keep (B, L) bool,
    pooled (B, D), the mean of the real tokens. Only the projection is a parameter."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        check_directory(config.pretrained)  # before the cache, which would not notice that it has gone
        encoder = frozen_encoder(config.pretrained, "cpu")
        hidden = getattr(encoder.config, "hidden_size", None) or encoder.config.d_model
        self.project = nn.Linear(hidden, config.width)

    def forward(self, ids: torch.Tensor):
        keep = ids != PAD
        encoder = frozen_encoder(self.config.pretrained, str(ids.device))
        with torch.no_grad():  # frozen: no graph through it, so no memory for its activations either
            hidden = encoder(input_ids=ids.clamp(min=0), attention_mask=keep.long()).last_hidden_state
        # Normalised first: encoders' feature scales differ by orders of magnitude (BERT's reach tens).
        x = self.project(F.layer_norm(hidden.float(), hidden.shape[-1:]))
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        return x, keep, pooled


class PretrainedTokenizer(TokenizerFile):
    """A pretrained encoder's own tokenizer with CaptionTokenizer's interface: called on texts it gives
    (B, max_length) ids padded with PAD; `save` / `load` a tokenizer.json. It is the fast tokenizer's
    `tokenizers.Tokenizer` (special tokens, truncation that keeps the closing token included), so the
    model directory's tokenizer.json is all it needs."""
    pad_id = PAD

    def __init__(self, tokenizer: Tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)

    @classmethod
    def from_pretrained(cls, path: str, max_length: int) -> "PretrainedTokenizer":
        check_directory(path)
        transformers = import_transformers()
        try:
            fast = transformers.AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, KeyError, ImportError) as error:
            raise UserError(f"cannot load the tokenizer in {path}: {str(error).strip().splitlines()[0]}") from None
        if getattr(fast, "backend_tokenizer", None) is None:
            raise UserError(f"the tokenizer in {path} has no fast (tokenizers) version; save one with tokenizer.json")
        return cls(Tokenizer.from_str(fast.backend_tokenizer.to_str()), max_length)  # a copy: padding is set here

    @classmethod
    def load(cls, path: str | Path, max_length: int) -> "PretrainedTokenizer":
        return cls(cls.read(path), max_length)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        encodings = self.encode(texts)
        ids = torch.full((len(encodings), self.max_length), PAD, dtype=torch.long)
        for row, encoding in enumerate(encodings):
            ids[row, :len(encoding.ids)] = torch.tensor(encoding.ids, dtype=torch.long)
        return ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) != PAD], skip_special_tokens=True)
