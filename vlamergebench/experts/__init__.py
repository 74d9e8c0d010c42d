"""Building expert sets: scripted demonstrations (collect) and the default expert set's recipe."""
