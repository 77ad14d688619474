"""rft_trl.models."""
