"""The built-in landmark-driven generator: a dense warp of the avatar driven by MediaPipe landmarks."""
