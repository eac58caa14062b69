"""The training loop and what runs inside it: checkpoints, scale-out, objectives, the distillation loss, progress and
trackers."""
