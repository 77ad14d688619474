"""rft_trl.trainers."""
