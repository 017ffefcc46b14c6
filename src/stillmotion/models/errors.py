"""The models' errors a user can fix, importable without torch (the command line's error handling)."""


class ModelNotAvailable(RuntimeError):
    """The requested weights cannot be found locally and cannot be downloaded."""


class DeviceNotAvailable(ValueError):
    """The requested device is not a device torch knows, or is not present on this machine."""
