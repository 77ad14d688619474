"""rft_trl: reinforcement fine-tuning for multimodal models on transformers, TRL, PEFT and Accelerate."""

__version__ = "0.1.0"
