from .model import PRESETS, DiffusionConfig, TextToImageDiffusion

Config, Model = DiffusionConfig, TextToImageDiffusion
