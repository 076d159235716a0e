"""Errors as the server returns them: ``{"error": {"type", "message"}}`` with the status that fits.

Library errors map to statuses here, once; anything unexpected becomes a 500 whose body says only that the
server failed (the traceback goes to the server's log, never to a client).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lychee_memory import (
    BankMismatchError,
    BankNotFoundError,
    ContextTooLongError,
    DocumentError,
    DocumentNotFoundError,
    EmptyQuestionError,
    FilterError,
    LycheeError,
    StoreFullError,
)

logger = logging.getLogger("lychee_memory.server")


class ApiError(Exception):
    """An error with the HTTP status and the type a client sees."""

    def __init__(self, status: int, type: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.headers = headers


# (error class, status, type): the first match wins, so subclasses come before their bases.
LIBRARY_ERRORS: list[tuple[type[Exception], int, str]] = [
    (EmptyQuestionError, 422, "empty_question"),
    (ContextTooLongError, 422, "too_long"),
    (BankNotFoundError, 404, "not_found"),
    (DocumentNotFoundError, 404, "not_found"),
    (BankMismatchError, 409, "bank_mismatch"),
    (StoreFullError, 507, "store_full"),
    (FilterError, 400, "invalid_filter"),
    (DocumentError, 400, "invalid_document"),
]


def from_library(error: LycheeError) -> ApiError:
    if isinstance(error, BankNotFoundError):  # the library's message lists the store's other banks: not for clients
        return ApiError(404, "not_found", "no such bank (it may have been deleted)")
    for kind, status, name in LIBRARY_ERRORS:
        if isinstance(error, kind):
            return ApiError(status, name, str(error))
    return ApiError(400, "invalid_request", str(error))


def body(error: ApiError) -> dict[str, Any]:
    return {"error": {"type": error.type, "message": error.message}}


def response(error: ApiError) -> JSONResponse:
    return JSONResponse(body(error), status_code=error.status, headers=error.headers)


def _describe_validation(error: RequestValidationError, content_type: str) -> str:
    parts = []
    for problem in error.errors():
        if problem.get("type") == "json_invalid":
            return "the request body is not valid JSON"
        if tuple(problem.get("loc", ())) == ("body",) and "json" not in content_type:
            return "the request body must be a JSON object: send it with 'Content-Type: application/json'"
        location = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
        parts.append(f"{location or 'body'}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_handlers(app: Any) -> None:
    """Every error a route can raise, as JSON with its status."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return response(error)

    @app.exception_handler(LycheeError)
    async def library_error(request: Request, error: LycheeError) -> JSONResponse:
        return response(from_library(error))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        return response(ApiError(400, "invalid_request", _describe_validation(error, content_type)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        message = "no such route" if error.status_code == 404 else str(error.detail)
        return response(ApiError(error.status_code, kinds.get(error.status_code, "http_error"), message))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return response(ApiError(500, "internal", "the server failed to handle this request; see its log"))
