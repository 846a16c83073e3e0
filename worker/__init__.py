"""galmet: worker."""
