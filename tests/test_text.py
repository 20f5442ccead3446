import torch

from dreamlet.data.shapes import ShapesDataset
from dreamlet.text.encoder import TextEncoder, TextEncoderConfig
from dreamlet.text.tokenizer import CaptionTokenizer


def make_tokenizer():
    return CaptionTokenizer.train(ShapesDataset(32, seed=0).captions(3000), max_length=16)


def test_tokenizer_round_trip_and_save_load(tmp_path):
    tok = make_tokenizer()
    text = "a small red triangle at the top left"
    ids = tok([text])
    assert ids.shape == (1, 16)
    assert tok.decode(ids[0]) == text
    # every caption word is one token: no [UNK] in the training vocabulary's words
    assert (ids != tok.tokenizer.token_to_id("[UNK]")).all()
    tok.save(tmp_path / "tokenizer.json")
    again = CaptionTokenizer.load(tmp_path / "tokenizer.json", max_length=16)
    assert torch.equal(again([text, "a blue square above a green circle"]),
                       tok([text, "a blue square above a green circle"]))


def test_unknown_words_and_long_prompts_never_crash():
    tok = make_tokenizer()
    ids = tok(["a zebra-striped 🦓 dodecahedron!!", "red " * 500, "", "A LARGE Blue Circle"])
    assert ids.shape == (4, 16)
    eos = tok.tokenizer.token_to_id("[EOS]")
    assert ids[1, -1] == eos  # truncated, but still closed
    assert tok.decode(ids[3]) == "a large blue circle"  # lower-cased


def test_text_encoder_shapes_and_padding_invariance():
    tok = make_tokenizer()
    enc = TextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size, max_length=16, width=32, layers=2, heads=4,
                                        pad_id=tok.pad_id)).eval()
    ids = tok(["a red circle", "a small green square at the top"])
    tokens, keep, pooled = enc(ids)
    assert tokens.shape == (2, 16, 32) and keep.shape == (2, 16) and pooled.shape == (2, 32)
    # padding does not change what real tokens say
    short = ids[:1, :8]
    enc.position.data[8:] += 1.0
    t2, _, p2 = enc(short)
    assert torch.allclose(pooled[:1], p2, atol=1e-5)


def test_token_convolution_binds_neighbours_and_ignores_padding():
    """With `conv`, a word's feature depends on its neighbours ("green circle" vs "red circle" at "circle"),
    and padding, which the convolution also reads, still changes nothing."""
    tok = make_tokenizer()
    enc = TextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size, max_length=16, width=32, layers=0, heads=4,
                                        pad_id=tok.pad_id, conv=3)).eval()
    ids = tok(["a green circle", "a red circle", "a small green square at the top"])
    tokens, _, pooled = enc(ids)
    circle = tok.tokenizer.token_to_id("circle")
    at = [int((row == circle).nonzero()[0]) for row in ids[:2]]
    assert at[0] == at[1] and not torch.allclose(tokens[0, at[0]], tokens[1, at[1]], atol=1e-3)
    t2, _, p2 = enc(ids[:1, :6])  # the same caption, less padding
    assert torch.allclose(pooled[:1], p2, atol=1e-5)
