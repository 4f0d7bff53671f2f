"""One error hierarchy for the controller. Adapters translate library exceptions into these
(`raise PlcError(...) from exc`) so callers never depend on snap7, pypylon or Ray exception types."""


class ControllerError(Exception):
    """Base of every error the controller raises on purpose."""


class ConfigError(ControllerError):
    """The configuration or a file it names is invalid. The message is one line naming the problem."""


class PlcError(ControllerError):
    """The PLC link failed, timed out, or the PLC's data blocks do not match the contract."""


class PlcStalledError(PlcError):
    """A request outlived its timeout because this process was not running (stopped, starved), not
    because the link failed: the connection is reset all the same, but no link alarm is due."""


class PlcContractError(PlcError):
    """The PLC answers, but its data blocks break the interface contract (size, version)."""


class CameraError(ControllerError):
    """The frame source failed or is unreachable."""


class InferenceError(ControllerError):
    """Inference failed, timed out or no worker is available."""


class JournalError(ControllerError):
    """A record could not be made durable."""


class InUseError(ControllerError):
    """Another controller already runs this line (holds its journal or its PLC): refused at start."""
