"""The exceptions a user can act on. The CLI prints them in one line, without a traceback."""


class TinyDistillError(Exception):
    """A problem with the user's input (config, data, model) that they can fix."""

    exit_code = 2  # what the CLI exits with
    prefix = "error"  # what the CLI's one line says before the message


class ConfigError(TinyDistillError):
    """A config key is unknown, has the wrong type, or holds an impossible value."""


class DataError(TinyDistillError):
    """A corpus or dataset is missing, empty, or lacks a column the config names."""


class ModelError(TinyDistillError):
    """A model cannot be loaded, or teacher and student do not fit together."""
