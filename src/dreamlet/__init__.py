"""dreamlet: train your own text-to-image model from scratch, then generate from prompts."""
__version__ = "0.1.0"
