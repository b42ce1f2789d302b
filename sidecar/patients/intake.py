"""ADT over the orders' MLLP listener: one intake for both feeds, so that ADT is logged,
acknowledged and deduplicated exactly as orders are (sidecar.orders.intake).

An ADT message is parsed (hl7.adt), applied (sidecar.patients.adt), logged and committed in one
transaction; only then is AA sent, and the worklist told of the orders whose patient changed.
A repeated MSH-10 gets the original ACK (the change is undone when its log row meets the first
one's); anything wrong answers AE or AR with an ERR segment, logged. Every other message goes to
the order intake unchanged.
"""

from __future__ import annotations

import logging

from sqlmodel import Session

from hl7.adt import AdtMessage, parse_adt_message
from hl7.er7 import decode_message
from hl7.errors import ApplicationInternalError, Hl7Error
from hl7.header import read_header
from sidecar.orders.intake import OrderIntake
from sidecar.orders.intake_log import (
    Applied,
    check_header,
    check_no_nul,
    sender_of,
)
from sidecar.patients.adt import apply_adt

log = logging.getLogger(__name__)

#: The message log's note on an ADT that changed nothing (sent again, or a swapped merge).
NOTHING_CHANGED = "nothing changed: the registry already held what the message says"


class HospitalIntake(OrderIntake):
    """The MLLP handler for orders and ADT: `await intake(raw, peer)` returns the ACK bytes."""

    def _handle(self, raw: bytes) -> bytes:
        header = read_header(raw)
        if header is None or header.message_type != "ADT":
            return super()._handle(raw)
        sender = sender_of(header)
        text = decode_message(raw)
        try:
            message = parse_adt_message(text, default_zone=self._zone)
            check_header(message.header)
            check_no_nul(text)
            return self._apply_adt(text, message, sender)
        except Hl7Error as error:
            return self._refuse(text, header, sender, error)

    def _apply_adt(self, text: str, message: AdtMessage, sender: str) -> bytes:
        def apply(session: Session) -> Applied:
            changed, applied = apply_adt(session, message, actor=f"hl7:{sender}")
            note = None if applied else NOTHING_CHANGED
            return Applied(changed, None, note, "order(s) rewritten")

        # Another connection changed the same patient at the same moment: AR, so that the HIS
        # sends it again (it then applies to what that one committed).
        return self._commit_accepted(
            text,
            message.header,
            sender,
            apply,
            lambda: ApplicationInternalError(
                "the patient was changed by another message meanwhile; send it again"
            ),
        )
