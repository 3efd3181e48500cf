"""The SAE training loop and what it needs: schedules, normalization, logging."""
