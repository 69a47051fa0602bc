"""Training and inference: the loop, checkpoints, schedules, feature extraction, distributed set-up."""
