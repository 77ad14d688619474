"""rft_trl.data."""
