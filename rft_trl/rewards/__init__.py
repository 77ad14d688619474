"""rft_trl.rewards."""
