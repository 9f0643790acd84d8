"""One error hierarchy for the service.

Every error knows its HTTP status and a stable machine-readable ``code``; only the API layer
(:mod:`service.api.errors`) turns them into responses, so the batcher, the decoder and the model
runner raise plain Python exceptions and stay free of HTTP.
"""

from __future__ import annotations


class GreenserveError(Exception):
    """Root of every error the service raises: each knows the HTTP status and code it is answered with
    (:mod:`service.api.errors` is the one place that turns them into responses)."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


# --- 4xx: the request is at fault -------------------------------------------------------------


class BadImageError(GreenserveError):
    """The body is not an image we can decode (corrupt, truncated, unknown format)."""

    status_code = 400
    code = "bad_image"


class PayloadTooLargeError(GreenserveError):
    """The body is larger than ``max_body_bytes``."""

    status_code = 413
    code = "body_too_large"


class ImageTooLargeError(GreenserveError):
    """The image has more pixels than ``max_image_pixels`` (checked before full decoding)."""

    status_code = 413
    code = "image_too_large"


class UnsupportedMediaTypeError(GreenserveError):
    """The request's content type is not multipart/form-data or image/*, or the format is refused."""

    status_code = 415
    code = "unsupported_media_type"


class InvalidParameterError(GreenserveError):
    """A query parameter, header or JSON field is out of range or malformed."""

    status_code = 422
    code = "invalid_parameter"


class InferRequestError(GreenserveError):
    """An Open Inference Protocol request the server cannot take (malformed JSON, an unknown input
    or output, a wrong datatype or shape, a bad parameter): 400, as Triton and KServe answer it."""

    status_code = 400
    code = "bad_request"


class UnauthorizedError(GreenserveError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFoundError(GreenserveError):
    status_code = 404
    code = "not_found"


class MethodNotAllowedError(GreenserveError):
    status_code = 405
    code = "method_not_allowed"


class ClientClosedRequestError(GreenserveError):
    """The client went away before its answer was ready; its item left the queue uncomputed. The
    status (nginx's 499) is never seen by that client: it is what the access log and metrics count."""

    status_code = 499
    code = "client_closed_request"

    def __init__(self, message: str = "client disconnected") -> None:
        super().__init__(message)


# --- Load shedding and lifecycle ---------------------------------------------------------------


class QueueFullError(GreenserveError):
    """The batcher's bounded queue is full; the client should retry after ``retry_after_s``."""

    status_code = 429
    code = "queue_full"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class NotReadyError(GreenserveError):
    """The model is still loading or warming up."""

    status_code = 503
    code = "not_ready"


class DrainingError(GreenserveError):
    """The server is shutting down and accepts no new work."""

    status_code = 503
    code = "draining"

    def __init__(self, message: str = "server is shutting down; retry on another instance") -> None:
        super().__init__(message, headers={"Retry-After": "1", "Connection": "close"})


class DeadlineExceededError(GreenserveError):
    """The request's deadline passed while it waited in the queue; it was never computed."""

    status_code = 504
    code = "deadline_exceeded"


# --- 5xx: we are at fault ----------------------------------------------------------------------


class ModelError(GreenserveError):
    """The model failed on a batch (the exception is logged with the request ids)."""

    status_code = 500
    code = "model_error"


class BatchResultLengthError(ModelError):
    """A batch function returned a result list whose length differs from the batch's."""

    code = "batch_result_length"


# --- Start-up ----------------------------------------------------------------------------------


class ConfigurationError(GreenserveError):
    """Bad settings detected at start-up: the server refuses to start (never a client's answer)."""

    code = "configuration_error"
