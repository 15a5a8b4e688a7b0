"""Errors a user can act on. The CLI prints their message on one line and exits 1."""


class AsdError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(AsdError):
    """An invalid configuration file, field or command-line value."""


class DataError(AsdError):
    """Audio or dataset problem: missing folder, corrupt or unusable file."""


class CheckpointError(AsdError):
    """A run folder or checkpoint that is missing, incomplete or incompatible."""


class OutputError(AsdError):
    """A file or folder that cannot be written: unwritable, read-only, full, or under a file."""


class DependencyError(AsdError):
    """An optional package a command needs is not installed."""


class TrainingError(AsdError):
    """Training that cannot give a usable model, such as a loss or weights that are not finite."""


def os_error_message(error: OSError, action: str = "cannot write") -> str:
    """One line for an operating-system error: what could not be done, where, and why."""
    where = f" {error.filename}" if error.filename else ""
    return f"{action}{where}: {error.strerror or error}"
