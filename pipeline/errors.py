"""The exception root of the shared package."""


class PipelineError(Exception):
    """Root of every error raised by the shared package."""


class ConfigError(PipelineError):
    """A setting is missing or invalid; the message names the environment variable."""
