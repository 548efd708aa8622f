"""The one error hierarchy: raised anywhere, rendered once (CLI message or OpenAI-shaped HTTP error)."""


class QAdapterError(Exception):
    """An expected failure with a message that tells the user what to do."""

    code: str = "internal_error"


class InvalidAdapter(QAdapterError):
    """An adapter directory or upload that must not be loaded."""

    code = "invalid_adapter"


class ModelLoadError(QAdapterError):
    """The base model could not be found, fetched or converted."""

    code = "model_load_error"


class InvalidRequest(QAdapterError):
    """A request whose parameters are out of bounds or malformed."""

    code = "invalid_request_error"
