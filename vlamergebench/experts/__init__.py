"""Building expert sets: scripted demonstrations (collect), the default recipes, acceptance statistics."""
