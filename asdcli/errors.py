"""Errors a user can act on. The CLI prints their message on one line and exits 1."""


class AsdError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(AsdError):
    """An invalid configuration file, field or command-line value."""


class DataError(AsdError):
    """Audio or dataset problem: missing folder, corrupt or unusable file."""


class CheckpointError(AsdError):
    """A run folder or checkpoint that is missing, incomplete or incompatible."""


class NotBuiltError(AsdError):
    """A command of the design card that this version does not provide yet."""
