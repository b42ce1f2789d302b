"""HL7 v2 date/time values (TS, DTM, DT) to timezone-aware Python values.

Format (HL7 v2.5.1 2A.3.22 DTM): YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ].

A value without an offset is local time of the sender. Which zone that is cannot be read from the
message, so the caller passes `default_zone` (the service's configured zone, normally the
hospital's). None means the zone of this process, resolved per value so that daylight saving time
is right for each date. Missing trailing parts take their first value (a date alone is midnight).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo

_TIMESTAMP = re.compile(
    r"(?P<year>\d{4})(?:(?P<month>\d{2})(?:(?P<day>\d{2})(?:(?P<hour>\d{2})(?:(?P<minute>\d{2})"
    r"(?:(?P<second>\d{2})(?:\.(?P<fraction>\d{1,4}))?)?)?)?)?)?"
    r"(?P<offset>[+-]\d{4})?"
)


def parse_timestamp(text: str, default_zone: tzinfo | None = None) -> datetime:
    """Parse an HL7 TS/DTM value (TS component 1) into an aware datetime; ValueError if invalid."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise ValueError("not an HL7 date/time (YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ])")
    parts = match.groupdict()
    fraction = parts["fraction"] or ""
    value = datetime(
        int(parts["year"]),
        int(parts["month"] or 1),
        int(parts["day"] or 1),
        int(parts["hour"] or 0),
        int(parts["minute"] or 0),
        int(parts["second"] or 0),
        int(fraction.ljust(6, "0")) if fraction else 0,
    )
    offset = parts["offset"]
    if offset is not None:
        hours, minutes = int(offset[1:3]), int(offset[3:5])
        if hours > 14 or minutes > 59:
            raise ValueError("time zone offset out of range")
        delta = timedelta(hours=hours, minutes=minutes)
        return _in_range(value.replace(tzinfo=timezone(-delta if offset[0] == "-" else delta)))
    try:
        if default_zone is None:
            return _in_range(value.astimezone())  # naive means local time of this process
        return _in_range(value.replace(tzinfo=default_zone))
    except (OverflowError, ValueError) as exc:
        raise ValueError(_OUT_OF_RANGE) from exc


_OUT_OF_RANGE = "outside the range of times that can be converted to UTC"


def _in_range(value: datetime) -> datetime:
    """`value`, when it has a UTC equivalent (at the edges of years 1 and 9999 it has none: its
    conversion would overflow wherever the time is used)."""
    try:
        value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise ValueError(_OUT_OF_RANGE) from exc
    return value


def parse_date(text: str) -> date:
    """Parse an HL7 date (DT, or the date part of a TS such as PID-7); needs YYYYMMDD.

    A birth date of lower precision (YYYY or YYYYMM) is refused rather than completed, because a
    made-up day would end up in the DICOM worklist as if it were true.
    """
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise ValueError("not an HL7 date (YYYYMMDD)")
    if match["day"] is None:
        raise ValueError("a date needs year, month and day (YYYYMMDD)")
    return date(int(match["year"]), int(match["month"]), int(match["day"]))


def format_timestamp(value: datetime) -> str:
    """An aware datetime as HL7 DTM to the second with its offset: YYYYMMDDHHMMSS+ZZZZ."""
    if value.tzinfo is None:
        raise ValueError("HL7 timestamps written by this service carry an offset")
    return value.strftime("%Y%m%d%H%M%S%z")
