"""One transport module per platform, and the registry that lists them (registry.py)."""
