"""Building expert sets: the default recipes and their acceptance statistics."""
