"""A caption tokenizer trained on the training captions with Hugging Face `tokenizers`.

WordPiece over lower-cased words: every caption word of the training set becomes one token, and an
unknown word falls back to its known pieces or to [UNK], so no prompt can make it fail. Prompts
longer than `max_length` are truncated.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"


class CaptionTokenizer:
    def __init__(self, tokenizer: Tokenizer, max_length: int = 32):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.pad_id = tokenizer.token_to_id(PAD)
        tokenizer.enable_truncation(max_length)
        tokenizer.enable_padding(pad_id=self.pad_id, pad_token=PAD, length=max_length)

    @classmethod
    def train(cls, captions, vocab_size: int = 4096, max_length: int = 32) -> "CaptionTokenizer":
        tok = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=64))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK, BOS, EOS],
                                            show_progress=False)
        tok.train_from_iterator(captions, trainer)
        from tokenizers.processors import TemplateProcessing
        tok.post_processor = TemplateProcessing(single=f"{BOS} $A {EOS}",
                                                special_tokens=[(BOS, tok.token_to_id(BOS)),
                                                                (EOS, tok.token_to_id(EOS))])
        return cls(tok, max_length)

    @classmethod
    def load(cls, path: str | Path, max_length: int = 32) -> "CaptionTokenizer":
        return cls(Tokenizer.from_file(str(path)), max_length)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """Token ids, (B, max_length) int64, padded with pad_id; an over-long text keeps its start."""
        encodings = self.tokenizer.encode_batch([str(t) for t in texts])
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        # Truncation may cut the closing [EOS]; keep it so the encoder always sees where text ends.
        last = (ids != self.pad_id).sum(1) - 1
        ids[torch.arange(len(ids)), last] = self.tokenizer.token_to_id(EOS)
        return ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
