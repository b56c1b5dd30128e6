"""The one error type of st-serve's handlers: what the client gets back (status, message, field, headers)."""

from __future__ import annotations


class RequestError(Exception):
    """A request the server refuses or could not answer: an HTTP status, a message that names the field, and
    TEI's error type ("Validation", "Tokenizer", "Overloaded", "Backend", "Unhealthy", ...)."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str = "Validation",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.headers = headers or {}
