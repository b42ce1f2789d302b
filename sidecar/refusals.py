"""The clinical services' refusals, each with the HTTP status the API answers it with.

The services (orders, reports, critical findings, the status workflows) raise these without
knowing about HTTP; `sidecar.errors` renders every one of them in the API's error format, so no
route translates them by hand. The HL7 intake catches the ones it answers with AE.

    Refusal
      ConflictingState   409  the record's state does not allow the change
      InvalidRequest     400  the request contradicts the record or a clinical rule
      UnknownRecord      404  a record the request names does not exist
      NotPermitted       403  the role allows the action, but not on this record
"""

from __future__ import annotations


class Refusal(Exception):
    status_code = 400


class ConflictingState(Refusal):
    status_code = 409


class InvalidRequest(Refusal):
    status_code = 400


class UnknownRecord(Refusal):
    status_code = 404


class NotPermitted(Refusal):
    status_code = 403
