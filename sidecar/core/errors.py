"""The one hierarchy of refusals: what the service declines to do, and why.

Services (orders, reports, findings, the status workflows, the viewer's access checks) and routes
raise these without knowing HTTP; sidecar.core.api_errors renders every one in the API's error
format, with the status each names, at one seam. The HL7 intake catches the ones it answers AE.

    Refusal                    status  code
      InvalidRequest           400     bad_request      the request contradicts the record or a rule
      NotAuthenticated         401     unauthorized     no valid credential
      NotPermitted             403     forbidden        the role (or the record) does not allow it
      UnknownRecord            404     not_found        a record the request names does not exist
      ConflictingState         409     conflict         the record's state does not allow the change
      UnacceptableValue        422     validation_error a value breaks a rule its field alone
                                                        cannot tell (a password with the user name)
      TooManyAttempts          429     too_many_requests  failed attempts: wait (Retry-After)
      Unavailable              503     unavailable      a part the request needs is off or down
"""

from __future__ import annotations

from typing import Any


class Refusal(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.headers: dict[str, str] = {}


class InvalidRequest(Refusal):
    pass


class NotAuthenticated(Refusal):
    status_code = 401
    code = "unauthorized"


class NotPermitted(Refusal):
    status_code = 403
    code = "forbidden"


class UnknownRecord(Refusal):
    status_code = 404
    code = "not_found"


class ConflictingState(Refusal):
    status_code = 409
    code = "conflict"


class Unavailable(Refusal):
    status_code = 503
    code = "unavailable"


class UnacceptableValue(Refusal):
    """422 in the shape of a request validation error: `location` names the field."""

    status_code = 422
    code = "validation_error"

    def __init__(self, location: str, message: str) -> None:
        super().__init__(
            "the request is not valid", details=[{"location": location, "message": message}]
        )


class TooManyAttempts(Refusal):
    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)
        self.headers = {"Retry-After": str(self.retry_after)}
