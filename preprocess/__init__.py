"""jjepa.preprocess."""
