"""A caption tokenizer trained on the training captions with Hugging Face `tokenizers`.

WordPiece over lower-cased words: every caption word of the training set becomes one token (the
most frequent ones, when there are more than the vocabulary holds), and an unknown word is spelled
out in characters, or [UNK] for a character never seen, so no prompt can make it fail. Prompts
longer than `max_length` are truncated.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from ..checkpoint import UserError

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
NORMALIZER = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
PRE_TOKENIZER = pre_tokenizers.BertPreTokenizer()


def word_counts(captions) -> Counter:
    """How often each word (as the tokenizer splits and lower-cases them) occurs in the captions."""
    return Counter(word for caption in captions
                   for word, _ in PRE_TOKENIZER.pre_tokenize_str(NORMALIZER.normalize_str(str(caption))))


class TokenizerFile:
    """What dreamlet's caption tokenizers share (CaptionTokenizer, and a pretrained encoder's own,
    text.pretrained.PretrainedTokenizer): a Hugging Face `tokenizers.Tokenizer`, saved as a model
    directory's tokenizer.json, that turns texts into (B, max_length) token ids when called."""
    tokenizer: Tokenizer
    max_length: int

    @staticmethod
    def read(path: str | Path) -> Tokenizer:
        try:
            return Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception for a file that is not a tokenizer
            raise UserError(f"cannot read {path}: {str(error).strip().splitlines()[0]}") from None

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: list[str]) -> list:
        """The `tokenizers` encodings of the texts (anything else given is read as its str)."""
        return self.tokenizer.encode_batch([str(t) for t in texts])


class CaptionTokenizer(TokenizerFile):
    def __init__(self, tokenizer: Tokenizer, max_length: int = 32):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.pad_id = tokenizer.token_to_id(PAD)
        tokenizer.enable_truncation(max_length)
        tokenizer.enable_padding(pad_id=self.pad_id, pad_token=PAD, length=max_length)

    @classmethod
    def train(cls, captions, vocab_size: int = 4096, max_length: int = 32) -> "CaptionTokenizer":
        """The special tokens, every character (alone and as a "##" continuation, so an unseen word can
        still be spelled), then the caption words, most frequent first, up to vocab_size: the
        vocabulary WordPiece training gives a caption set, whose words almost all fit, counted here
        rather than by tokenizers' WordPieceTrainer, whose token set and ids depend on hash-map order
        from one process to the next (huggingface/tokenizers#1794; measured on the emoji captions):
        the same captions must give the same ids, or the same --seed would not give the same model."""
        counts = word_counts(captions)
        chars = sorted({char for word in counts for char in word})
        vocab = [PAD, UNK, BOS, EOS] + chars + ["##" + char for char in chars]
        words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))  # ties: alphabetical
        vocab += words[:max(0, vocab_size - len(vocab))]
        return cls.from_vocabulary(vocab, max_length)

    @classmethod
    def from_vocabulary(cls, vocab: list[str], max_length: int = 32) -> "CaptionTokenizer":
        """The WordPiece tokenizer whose token i is vocab[i] (vocab starts with PAD, UNK, BOS, EOS)."""
        tok = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token=UNK,
                                         max_input_chars_per_word=64))
        tok.normalizer, tok.pre_tokenizer, tok.decoder = NORMALIZER, PRE_TOKENIZER, decoders.WordPiece()
        tok.add_special_tokens([PAD, UNK, BOS, EOS])  # their ids stay; decode(skip_special_tokens) drops them
        from tokenizers.processors import TemplateProcessing
        tok.post_processor = TemplateProcessing(single=f"{BOS} $A {EOS}",
                                                special_tokens=[(BOS, tok.token_to_id(BOS)),
                                                                (EOS, tok.token_to_id(EOS))])
        return cls(tok, max_length)

    def extended(self, captions, vocab_size: int = 4096) -> tuple["CaptionTokenizer", int]:
        """For fine-tuning on new captions: this tokenizer with the characters and words of `captions` it
        lacks appended, most frequent first, up to `vocab_size` tokens in all. Every old token keeps its
        id, so a trained text encoder keeps what it learned and a new word gets a row of its own; a word
        left out is still spelled in characters. Returns the tokenizer and how many tokens it gained."""
        vocab = sorted(self.tokenizer.get_vocab(), key=self.tokenizer.token_to_id)
        known, counts = set(vocab), word_counts(captions)
        chars = sorted({char for word in counts for char in word} - known)
        words = sorted((w for w in counts if len(w) > 1 and w not in known), key=lambda w: (-counts[w], w))
        added = (chars + ["##" + c for c in chars if "##" + c not in known] + words)[:max(0, vocab_size - len(vocab))]
        return CaptionTokenizer.from_vocabulary(vocab + added, self.max_length), len(added)

    @classmethod
    def load(cls, path: str | Path, max_length: int = 32) -> "CaptionTokenizer":
        tokenizer = cls.read(path)
        if tokenizer.token_to_id(PAD) is None:
            raise UserError(f"cannot read {path}: not a dreamlet caption tokenizer (no {PAD} token)")
        return cls(tokenizer, max_length)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """Token ids, (B, max_length) int64, padded with pad_id; an over-long text keeps its start."""
        ids = torch.tensor([e.ids for e in self.encode(texts)], dtype=torch.long)
        # Truncation may cut the closing [EOS]; keep it so the encoder always sees where text ends.
        last = (ids != self.pad_id).sum(1) - 1
        ids[torch.arange(len(ids)), last] = self.tokenizer.token_to_id(EOS)
        return ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def text_max_length(text_config) -> int:
    """The token length a model's text config reads; a family without text (None): the text encoder's default."""
    if text_config is None:
        from .encoder import TextEncoderConfig
        return TextEncoderConfig.max_length
    return text_config.max_length


def tokenizer_for(text_config, trained: CaptionTokenizer):
    """The tokenizer a new model uses: the one trained on its captions, or a pretrained encoder's own.
    `text_config` is the model config's `text` (None for a family without one)."""
    if getattr(text_config, "pretrained", ""):
        from .pretrained import PretrainedTokenizer
        return PretrainedTokenizer.from_pretrained(text_config.pretrained, text_config.max_length)
    return CaptionTokenizer(trained.tokenizer, text_max_length(text_config))


def load_tokenizer(path: str | Path, text_config):
    """The tokenizer a model was saved with (its tokenizer.json), of the kind its text config says
    (None: a family without text; its model directory keeps a caption tokenizer all the same)."""
    if getattr(text_config, "pretrained", ""):
        from .pretrained import PretrainedTokenizer
        return PretrainedTokenizer.load(path, text_config.max_length)
    return CaptionTokenizer.load(path, text_max_length(text_config))
