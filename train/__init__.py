"""jjepa.train."""
