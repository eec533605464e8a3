"""nlora: continual learning of language models with low-rank adapters (N-LoRA and baselines)."""

__version__ = "0.1.0"
