"""galmet: training."""
