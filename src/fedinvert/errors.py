"""The error hierarchy. The command line turns any `FedinvertError` into one line and exit code 2."""


class FedinvertError(Exception):
    """Base class of every error fedinvert raises on purpose (bad input, missing data, ...)."""


class ConfigError(FedinvertError, ValueError):
    """A configuration key or value is unknown or invalid."""


class ObservationError(FedinvertError, ValueError):
    """The shared update does not fit the model, or holds NaN/inf."""


class MissingCapabilityError(FedinvertError):
    """An attack needs something the threat model of the scenario does not grant."""


class DataNotFoundError(FedinvertError, FileNotFoundError):
    """A data set or weights file is not on this machine; the message says how to get it."""


class CheckpointError(FedinvertError):
    """A checkpoint is corrupt, untrusted or does not match the architecture."""
