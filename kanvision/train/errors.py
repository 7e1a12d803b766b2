"""The training side's own error: a run that asked for something that does not exist."""

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A run asked for something that does not exist (model, kan kind, option): the message says what."""
