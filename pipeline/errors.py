"""The exception root of the shared package."""


class PipelineError(Exception):
    """Root of every error raised by the shared package."""


class ConfigError(PipelineError):
    """A setting is missing or invalid; the message names the environment variable."""


class ListenError(PipelineError):
    """A server cannot listen on its address (taken, or not an address of this host), so the
    service cannot start; the message names the address and the setting to change."""
