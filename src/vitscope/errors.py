"""One exception type for everything a user can get wrong.

The CLI prints ``error: <message>`` for a :class:`VitscopeError` and exits with status 2,
so every message must stand on one line and say *what* is wrong and *where*.
"""


class VitscopeError(Exception):
    """A user-facing error: bad input, missing or corrupt files, bad config values."""


class DatasetError(VitscopeError):
    """A dataset file is missing, truncated, corrupt, or fails its checksum."""


class ConfigError(VitscopeError, ValueError):
    """A configuration value is invalid."""
