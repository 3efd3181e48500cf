"""The one exception type for bad user input: configs, hook names, data, checkpoints.

Entry points print its message (which names the key and the fix) without a traceback.
"""


class ConfigError(ValueError):
    """A setting or input that cannot work; the message says which key to change and how."""
