"""Training: statistics, loss, optimiser, checkpoints, plots and the training loop."""
