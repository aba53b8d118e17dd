"""Code the neural generator families share: crop.py (face crops from landmarks) and runtime.py (runners)."""
