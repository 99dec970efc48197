"""``kind: Status`` error bodies with the reason, code and message a real API server gives.

The shapes follow k8s.io/apimachinery/pkg/api/errors (NewNotFound, NewAlreadyExists,
NewConflict, NewInvalid, ...), so clients that switch on ``reason`` or ``code`` (kopf's
``APIConflictError``, kubectl's ``Error from server (NotFound)``) see what a cluster sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .crd_schema import Cause


class APIError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(group: str, plural: str, name: str | None) -> dict[str, Any]:
    details: dict[str, Any] = {"kind": plural}
    if name is not None:
        details["name"] = name
    if group:
        details["group"] = group
    return details


def group_resource(group: str, plural: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(group: str, plural: str, name: str) -> APIError:
    return APIError(
        404, "NotFound", f'{group_resource(group, plural)} "{name}" not found', _details(group, plural, name)
    )


def already_exists(group: str, plural: str, name: str) -> APIError:
    message = f'{group_resource(group, plural)} "{name}" already exists'
    return APIError(409, "AlreadyExists", message, _details(group, plural, name))


def conflict(group: str, plural: str, name: str, why: str) -> APIError:
    message = f'Operation cannot be fulfilled on {group_resource(group, plural)} "{name}": {why}'
    return APIError(409, "Conflict", message, _details(group, plural, name))


MODIFIED = "the object has been modified; please apply your changes to the latest version and try again"


def invalid(group: str, kind: str, name: str, causes: Sequence[Cause]) -> APIError:
    """422 ``Invalid``: ``TrainingRun.llmfab.dev "x" is invalid: spec.model: Invalid value: ...``."""
    qualified = f"{kind}.{group}" if group else kind
    listed = str(causes[0]) if len(causes) == 1 else "[" + ", ".join(str(c) for c in causes) + "]"
    details = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes],
    }
    if group:
        details["group"] = group
    return APIError(422, "Invalid", f'{qualified} "{name}" is invalid: {listed}', details)


def bad_request(message: str) -> APIError:
    return APIError(400, "BadRequest", message)


def forbidden(group: str, plural: str, name: str, why: str) -> APIError:
    message = f'{group_resource(group, plural)} "{name}" is forbidden: {why}'
    return APIError(403, "Forbidden", message, _details(group, plural, name))


def method_not_allowed(verb: str) -> APIError:
    return APIError(
        405, "MethodNotAllowed", f"the server does not allow this method on the requested resource ({verb})"
    )


def unsupported_media_type(content_type: str, accepted: Sequence[str]) -> APIError:
    message = (
        f"the body of the request was in an unknown format - accepted media types include: {', '.join(accepted)}"
        if content_type
        else "the body of the request was in an unknown format"
    )
    return APIError(415, "UnsupportedMediaType", message)


def unprocessable(message: str) -> APIError:
    """A patch that cannot be applied (a failed JSON-patch ``test``): 422, reason ``Invalid``."""
    return APIError(422, "Invalid", message)


def internal(message: str) -> APIError:
    return APIError(500, "InternalError", f"Internal error occurred: {message}")
