"""What Hydra and submitit do not already give: layer sweeps expanded into jobs (``argv``) and
the one-job-per-GPU local launcher (``local_gpus``)."""
