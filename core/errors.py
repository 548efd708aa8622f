"""The one error hierarchy: raised anywhere, rendered once (CLI message or OpenAI-shaped HTTP error)."""

from __future__ import annotations


class QAdapterError(Exception):
    """An expected failure with a message that tells the user what to do; `param` names the culprit."""

    code: str = "internal_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def __reduce__(self) -> tuple[object, ...]:
        """Pickle with every attribute (Overloaded's retry_after_s too): errors cross process boundaries."""
        return _rebuilt, (type(self), str(self), self.__dict__)


def _rebuilt(cls: type[QAdapterError], message: str, state: dict[str, object]) -> QAdapterError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class InvalidAdapter(QAdapterError):
    """An adapter directory or upload that must not be loaded."""

    code = "invalid_adapter"


class ModelLoadError(QAdapterError):
    """The base model could not be found, fetched or converted."""

    code = "model_load_error"


class InvalidRequest(QAdapterError):
    """A request whose parameters are out of bounds or malformed."""

    code = "invalid_request_error"


class AdapterNotFound(QAdapterError):
    """A request named an adapter the server does not have (never a silent base-model fall-back)."""

    code = "model_not_found"

    @classmethod
    def named(cls, name: str, param: str = "model") -> AdapterNotFound:
        """The one message for a model this server does not serve."""
        return cls(f"The model {name!r} does not exist", param=param)


class ContextTooLong(InvalidRequest):
    """Prompt plus max_tokens exceed the model's context window."""

    code = "context_length_exceeded"


class Overloaded(QAdapterError):
    """The waiting queue is full; retry after `retry_after_s` seconds."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unauthorized(QAdapterError):
    """A missing or wrong API key."""

    code = "invalid_api_key"


class AdapterExists(QAdapterError):
    """An upload of a name that is already served (replace it with PUT instead)."""

    code = "adapter_exists"


class PayloadTooLarge(QAdapterError):
    """An upload over the size limit."""

    code = "payload_too_large"


class ReplicaFailed(QAdapterError):
    """The engine replica serving a request went away (in cluster mode); retry it."""

    code = "replica_failed"


class RequestTimeout(QAdapterError):
    """A request whose body did not arrive in time."""

    code = "request_timeout"


class Forbidden(QAdapterError):
    """A valid key that may not do this (an inference key on an admin route), or admin routes are off."""

    code = "forbidden"


class RequestFault(QAdapterError):
    """One request could not go on (its scores were not finite, its sampling failed); the others did."""

    code = "request_fault"


class InvalidData(QAdapterError):
    """Training or evaluation data that cannot be used (the message names the line)."""

    code = "invalid_data"
