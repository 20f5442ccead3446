"""Does a trained model's text encoder know word order? Cosine similarity of the pooled caption
for two captions that differ only in which object comes first, and of the contextual feature of the
same word as first or second object (1.000: the encoder passes the words through as a bag).

    .venv/bin/python bench/text_order.py RUN/model [RUN/model ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dreamlet.pipeline import Pipeline  # noqa: E402

FIRST, SWAPPED = "a green circle to the left of a red square", "a red square to the left of a green circle"


@torch.no_grad()
def probe(model_dir: str) -> dict:
    pipeline = Pipeline.load(model_dir)
    ids = pipeline.tokenizer([FIRST, SWAPPED])
    tokens, _, pooled = pipeline.model.text_encoder(ids)
    words = [[pipeline.tokenizer.tokenizer.id_to_token(int(t)) for t in row] for row in ids]
    green = [F.normalize(tokens[i, words[i].index("green")], dim=0) for i in range(2)]
    pooled = F.normalize(pooled, dim=-1)
    return {"pooled": float(pooled[0] @ pooled[1]), "green": float(green[0] @ green[1])}


if __name__ == "__main__":
    for model_dir in sys.argv[1:]:
        result = probe(model_dir)
        print(f"{model_dir}: pooled caption cosine {result['pooled']:.4f}, 'green' as 1st vs 2nd object {result['green']:.3f}")
