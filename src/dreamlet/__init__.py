"""dreamlet: train your own text-to-image model from scratch, then generate from prompts.

    import dreamlet
    pipe = dreamlet.load("runs/demo/model")                    # any family's model directory
    images = pipe("a large red circle at the top left", num=4)  # PIL images
    report = dreamlet.evaluate("runs/demo/model")              # the shapes judge's report
    data = dreamlet.datasets.load("emoji", size=32)            # the dataset objects the CLI trains on
    dreamlet.train(dreamlet.TrainConfig(model="gan", out="runs/gan", minutes=5), callback=print)

Names are imported on first use, so `import dreamlet` (and `dreamlet --version`) stays fast.
"""
__version__ = "0.2.0"

_LAZY = {"load": ("pipeline", "Pipeline.load"), "Pipeline": ("pipeline", "Pipeline"),
         "train": ("training", "train"), "TrainConfig": ("training", "TrainConfig"),
         "Progress": ("training", "Progress"),
         "evaluate": ("evaluation", "evaluate_shapes"), "datasets": ("data", None)}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'dreamlet' has no attribute {name!r}")
    import importlib
    module_name, attribute = _LAZY[name]
    value = importlib.import_module(f"dreamlet.{module_name}")
    for part in (attribute or "").split(".") if attribute else []:
        value = getattr(value, part)
    globals()[name] = value
    return value
