"""galmet: app."""
