"""Training on several ranks with torch.distributed: which rank this is (``context``), what a
trainer's step shares (``sync``), how a run's work is split (``placement``), and the latent-sharded
SAE (``latents``). One process uses the same code with a world of one."""
