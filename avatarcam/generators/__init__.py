"""Generators turn an avatar and the driver's motion into output frames; one module per generator."""
