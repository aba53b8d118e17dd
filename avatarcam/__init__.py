"""FaceMimic: a webcam-driven, reenacted avatar published as a virtual camera."""

__version__ = "0.1.0"
