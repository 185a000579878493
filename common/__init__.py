"""jjepa.common."""
