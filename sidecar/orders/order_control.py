"""ORC-1 order control from the HIS: the order statuses (ORC-5) each control accepts, and the
order a message about an existing order refers to."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from hl7.errors import ErrorLocation, RequiredFieldMissing, UnknownKeyIdentifier
from hl7.order_message import ImagingOrder as OrderGroup
from hl7.order_message import OrderControl
from sidecar.orders.models import ImagingOrder, OrderStatus

_S = OrderStatus
# ORC-1 order control -> the ORC-5 order status values accepted with it, and for SC the status
# it requests. Pairs not listed are answered AE (HL7 table 0119 / 0038).
ORDER_CONTROL: dict[OrderControl, dict[str, OrderStatus | None]] = {
    OrderControl.NEW_ORDER: {"": None, "SC": None},
    OrderControl.CHANGE_ORDER: {"": None, "SC": None},
    OrderControl.CANCEL_ORDER: {"": _S.CANCELLED, "CA": _S.CANCELLED},
    OrderControl.DISCONTINUE_ORDER: {"": _S.CANCELLED, "DC": _S.CANCELLED, "CA": _S.CANCELLED},
    OrderControl.STATUS_CHANGED: {
        "SC": _S.SCHEDULED,
        "IP": _S.IN_PROGRESS,
        "CM": _S.COMPLETED,
        "HD": _S.ON_HOLD,
        "CA": _S.CANCELLED,
        "DC": _S.CANCELLED,
    },
    OrderControl.HOLD_ORDER: {"": _S.ON_HOLD, "HD": _S.ON_HOLD},
    OrderControl.RELEASE_HOLD: {"": None, "SC": None},
}


def find_order(session: Session, group: OrderGroup) -> ImagingOrder:
    """The order an XO/CA/DC/SC/HD/RL refers to: placer number, filler number, accession."""
    keys: list[tuple[Any, str]] = []
    if group.placer_order_number and group.placer_order_number.entity_id:
        keys.append((ImagingOrder.placer_order_number, group.placer_order_number.entity_id))
    if group.filler_order_number and group.filler_order_number.entity_id:
        keys.append((ImagingOrder.filler_order_number, group.filler_order_number.entity_id))
    if group.accession_number:
        keys.append((ImagingOrder.accession_number, group.accession_number))
    if not keys:
        raise RequiredFieldMissing(
            "ORC-2 placer order number (or ORC-3 / OBR-18) is needed to find the order",
            ErrorLocation("ORC", group.sequence, 2),
        )
    for column, value in keys:
        found = session.exec(select(ImagingOrder).where(column == value)).first()
        if found is not None:
            return found
    raise UnknownKeyIdentifier(
        "no order matches the placer or filler order number",
        ErrorLocation("ORC", group.sequence, 2),
    )
