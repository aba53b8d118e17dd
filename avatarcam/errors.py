"""One error hierarchy for FaceMimic; every message says what failed, the value seen, what was expected and the fix."""


class FaceMimicError(Exception):
    """Base class of every error FaceMimic raises on purpose."""


class ConfigError(FaceMimicError):
    """A config key or command-line value is unknown or out of range."""


class ModelFileError(FaceMimicError):
    """A model file (landmarker, checkpoint, ONNX, engine) is missing, corrupt or of the wrong kind."""


class DeviceError(FaceMimicError):
    """A capture device, virtual camera or display could not be opened or failed while running."""


class AvatarError(FaceMimicError):
    """An avatar image could not be used (unreadable, too large, no face found)."""


class EngineError(FaceMimicError):
    """An inference runtime or engine could not be selected, built or run."""


class EngineUnavailable(EngineError):
    """A remote runtime cannot be reached for now (a Triton server that went away): the frame fails, the outputs keep
    the last good picture and the runner reconnects by itself, so this never counts towards a worker's limit of
    failures in a row."""


class HotkeyError(FaceMimicError):
    """A hotkey binding is malformed or names an unknown command."""


class WorkerError(FaceMimicError):
    """A worker thread stopped on an unexpected exception (a FaceMimicError is re-raised as it is instead)."""
