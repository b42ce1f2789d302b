"""The MPPS SCP: the DICOM port (MPPS_PORT, AE title MPPS_AET) modalities report performed
procedure steps on, with pynetdicom (Modality Performed Procedure Step SOP Class, and
Verification for C-ECHO).

Each N-CREATE and N-SET is applied and committed before it is answered: Success (0x0000) means
the step is stored. Whatever goes wrong answers a DIMSE failure status naming the problem (an
attribute missing or invalid, an unknown or finished step, the database unavailable), never a
dropped association. With DICOM_MODALITIES set, only those modalities may report (AE title, and
the host it is registered at unless it calls from this machine), as for C-STORE and the
worklist.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from datetime import tzinfo
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from sidecar.core.modalities import RegisteredModality
from sidecar.mpps.attributes import (
    PROCESSING_FAILURE,
    StepRefused,
    read_create,
    read_set,
)
from sidecar.mpps.service import StepOutcome, end_step, start_step
from sidecar.results.routing import ResultRouting

log = logging.getLogger(__name__)

NOT_AUTHORISED = 0x0124
# PS3.7 C.4: Error Comment is an LO.
_COMMENT_LENGTH = 64


class MppsListener:
    """The SCP, started and stopped with the service; `port` is known once started."""

    def __init__(
        self,
        engine: Engine,
        routing: ResultRouting,
        *,
        enabled: bool,
        host: str,
        port: int,
        ae_title: str,
        zone: tzinfo,
        modalities: Sequence[RegisteredModality] = (),
        on_orders_changed: Callable[[Sequence[int]], None] | None = None,
        on_status_queued: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.routing = routing
        self.enabled = enabled
        self.host = host
        self.ae_title = ae_title
        self._port = port
        self._zone = zone
        self._modalities = tuple(modalities)
        self._on_orders_changed = on_orders_changed
        self._on_status_queued = on_status_queued
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_address[1])

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if not self.enabled or self._server is not None:
            return
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        if self._modalities:
            ae.require_calling_aet = sorted({m.aet for m in self._modalities})
        ae.add_supported_context(ModalityPerformedProcedureStep)
        ae.add_supported_context(Verification)
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, _without_nagle),
            (evt.EVT_N_CREATE, self._on_n_create),
            (evt.EVT_N_SET, self._on_n_set),
            (evt.EVT_C_ECHO, lambda _event: 0x0000),
        ]
        self._server = ae.start_server((self.host, self._port), block=False, evt_handlers=handlers)
        log.info("MPPS SCP %s on %s:%d", self.ae_title, self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # --- DIMSE ------------------------------------------------------------------------------

    def _on_n_create(self, event: Any) -> tuple[Dataset | int, Dataset | None]:
        request = event.request
        uid = request.AffectedSOPInstanceUID
        generated = uid is None
        uid = str(uid) if uid is not None else generate_uid()
        calling = _calling_ae_title(event)

        def apply(session: Session) -> StepOutcome:
            start = read_create(event.attribute_list, self._zone)
            return start_step(session, uid, start, calling_ae_title=calling, routing=self.routing)

        status, outcome = self._apply(event, "N-CREATE", apply)
        if outcome is None:
            return status, None
        answer = Dataset()
        if generated:
            answer.AffectedSOPInstanceUID = uid  # pynetdicom moves it to the response
        return 0x0000, answer

    def _on_n_set(self, event: Any) -> tuple[Dataset | int, Dataset | None]:
        uid = str(event.request.RequestedSOPInstanceUID or "")

        def apply(session: Session) -> StepOutcome:
            end = read_set(event.modification_list, self._zone)
            return end_step(session, uid, end, routing=self.routing)

        status, outcome = self._apply(event, "N-SET", apply)
        return (status, None) if outcome is None else (0x0000, Dataset())

    def _apply(
        self, event: Any, operation: str, apply: Callable[[Session], StepOutcome]
    ) -> tuple[Dataset | int, StepOutcome | None]:
        """Runs `apply` in one transaction; the failure status to answer, or its outcome."""
        calling = _calling_ae_title(event)
        refusal = self._refusal(event)
        if refusal is not None:
            log.warning("MPPS %s from AE %s refused: %s", operation, calling, refusal.comment)
            return _status(refusal), None
        try:
            with Session(self.engine) as session:
                outcome = apply(session)
                session.commit()
                step_id, order_id = outcome.step.id, outcome.step.order_id
                status = outcome.step.status
        except StepRefused as refused:
            log.warning("MPPS %s from AE %s refused: %s", operation, calling, refused.comment)
            return _status(refused), None
        except SQLAlchemyError:
            log.exception("MPPS %s from AE %s: the database failed", operation, calling)
            return _status(StepRefused(PROCESSING_FAILURE, "the step could not be stored")), None
        except Exception:  # a defect: answered, logged, and the association kept
            log.exception("MPPS %s from AE %s failed", operation, calling)
            return _status(StepRefused(PROCESSING_FAILURE, "the step could not be processed")), None
        log.info(
            "MPPS %s from AE %s: step %s %s (order %s)",
            operation,
            calling,
            step_id,
            status.value,
            order_id if order_id is not None else "none: unscheduled",
        )
        if outcome.orders_changed and self._on_orders_changed is not None:
            self._on_orders_changed(outcome.orders_changed)
        if outcome.status_queued and self._on_status_queued is not None:
            self._on_status_queued()
        return 0x0000, outcome

    def _refusal(self, event: Any) -> StepRefused | None:
        """With registered modalities, the caller must be one of them, calling from its host."""
        if not self._modalities:
            return None
        calling = _calling_ae_title(event)
        address = str(event.assoc.requestor.address)
        hosts = {m.host for m in self._modalities if m.aet == calling}
        if _is_loopback(address) or any(_same_host(address, host) for host in hosts):
            return None
        return StepRefused(NOT_AUTHORISED, "this AE title is registered at another host")


def _without_nagle(event: Any) -> None:
    """Answers leave at once: with Nagle's algorithm a response written in pieces waits for the
    modality's delayed ACK (tens of milliseconds per N-CREATE and N-SET)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _calling_ae_title(event: Any) -> str:
    title = event.assoc.requestor.ae_title
    return str(title).strip()[:16]


def _status(refused: StepRefused) -> Dataset:
    status = Dataset()
    status.Status = refused.status
    status.ErrorComment = refused.comment[:_COMMENT_LENGTH]
    if refused.tag is not None:
        status.AttributeIdentifierList = [refused.tag]
    return status


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def _same_host(address: str, host: str) -> bool:
    """Whether the peer's address is `host` (an address, or a name resolving to it)."""
    if address == host:
        return True
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return address in resolved
