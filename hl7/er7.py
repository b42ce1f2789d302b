"""A small, strict ER7 (HL7 v2 "pipe and hat") tokenizer for the inbound hot path.

Why not hl7apy here: hl7apy's `parse_message` builds an element tree field by field and costs
10-20 ms for a five-segment ORM on the development machines (see the figures in hl7/orders.py);
the MLLP benchmark needs each message parsed, committed and acknowledged in a few milliseconds.
This module only splits and decodes what is read, lazily, and tests/hl7/test_hl7_orders.py checks it
against hl7apy on every sample message (a differential test of every field the order mapping
reads). hl7apy stays the reference and builds the outbound messages (hl7/ack.py).

What it follows (HL7 v2.5.1 chapter 2.5-2.7):
- the field separator is MSH-1 (the 4th character) and the encoding characters are MSH-2
  (component, repetition, escape, subcomponent; a 5th, the v2.7 truncation character, is ignored);
- segments end with CR; LF and CR LF are accepted too because file-based tools and some engines
  send them, and a raw LF cannot occur inside HL7 data anyway (it must be escaped);
- field numbering: in MSH the separator itself is MSH-1, so MSH-2 is the first split item;
- escape sequences are decoded only in values read (`\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh..\\`,
  `\\.br\\` as a line break; highlighting and other formatting commands are dropped);
- the HL7 null `""` (explicitly empty, "delete this value") reads as empty text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from hl7.errors import NotAnHl7Message

SEGMENT_TERMINATOR = "\r"
HL7_NULL = '""'


@dataclass(frozen=True)
class EncodingCharacters:
    """MSH-1 and MSH-2: the delimiters a message declares for itself."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def msh_2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent


DEFAULT_ENCODING = EncodingCharacters()


# --- escaping -------------------------------------------------------------------------------


def escape_text(text: str, encoding: EncodingCharacters = DEFAULT_ENCODING) -> str:
    """Encode plain text as one ER7 value: delimiters and control characters become escapes.

    The escape character goes first (`\\E\\`), so an input that already looks like an escape
    sequence stays literal text. Control characters (CR would end the segment, VT/FS would break
    MLLP framing) become hexadecimal escapes `\\Xhh\\`.
    """
    if text.isalnum():
        return text
    esc = encoding.escape
    pieces: list[str] = []
    for char in text:
        if char == esc:
            pieces.append(f"{esc}E{esc}")
        elif char == encoding.field:
            pieces.append(f"{esc}F{esc}")
        elif char == encoding.component:
            pieces.append(f"{esc}S{esc}")
        elif char == encoding.subcomponent:
            pieces.append(f"{esc}T{esc}")
        elif char == encoding.repetition:
            pieces.append(f"{esc}R{esc}")
        elif ord(char) < 0x20 or char == "\x7f":
            pieces.append(f"{esc}X{ord(char):02X}{esc}")
        else:
            pieces.append(char)
    return "".join(pieces)


def decode_text(raw: str, encoding: EncodingCharacters = DEFAULT_ENCODING) -> str:
    """Decode the escape sequences of one ER7 value (a component or subcomponent)."""
    if raw == HL7_NULL:
        return ""
    esc = encoding.escape
    if esc not in raw:
        return raw
    out: list[str] = []
    position = 0
    while True:
        start = raw.find(esc, position)
        if start < 0:
            out.append(raw[position:])
            break
        end = raw.find(esc, start + 1)
        if end < 0:
            # An escape character with no closing one: not a sequence, keep it as text.
            out.append(raw[position:])
            break
        out.append(raw[position:start])
        out.append(_decode_sequence(raw[start + 1 : end], encoding))
        position = end + 1
    return "".join(out)


_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")


def _decode_sequence(body: str, encoding: EncodingCharacters) -> str:
    simple = {
        "F": encoding.field,
        "S": encoding.component,
        "T": encoding.subcomponent,
        "R": encoding.repetition,
        "E": encoding.escape,
    }.get(body)
    if simple is not None:
        return simple
    if body in ("H", "N"):  # highlighting on/off: no meaning in plain text
        return ""
    if body == ".br":
        return "\n"
    if body.startswith("X") and _HEX.fullmatch(body[1:]):
        data = bytes.fromhex(body[1:])
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    if body.startswith("."):  # other formatting commands (.sp, .in, .ce ...): layout only
        return ""
    # Unknown or locally defined (\Zxx\) sequence: keep it verbatim rather than lose data.
    return f"{encoding.escape}{body}{encoding.escape}"


# --- structure ------------------------------------------------------------------------------


class FieldValue:
    """One repetition of one field, kept as raw ER7 and decoded on access."""

    __slots__ = ("_components", "encoding", "raw")

    def __init__(self, raw: str, encoding: EncodingCharacters) -> None:
        self.raw = raw
        self.encoding = encoding
        self._components: list[str] | None = None

    def __repr__(self) -> str:
        return f"FieldValue({self.raw!r})"

    @property
    def is_empty(self) -> bool:
        return self.raw in ("", HL7_NULL)

    def raw_component(self, component: int) -> str:
        """Raw ER7 text of component `component` (from 1), subcomponent delimiters included."""
        if self._components is None:
            self._components = self.raw.split(self.encoding.component)
        if component <= len(self._components):
            return self._components[component - 1]
        return ""

    def component(self, component: int = 1, subcomponent: int = 1) -> str:
        """Decoded text of one component (and subcomponent), '' when absent."""
        raw = self.raw_component(component)
        if self.encoding.subcomponent in raw:
            parts = raw.split(self.encoding.subcomponent)
            raw = parts[subcomponent - 1] if subcomponent <= len(parts) else ""
        elif subcomponent != 1:
            return ""
        return decode_text(raw, self.encoding)


_EMPTY_FIELD = FieldValue("", DEFAULT_ENCODING)


class Segment:
    """One segment: its id, its occurrence number among same-id segments, its raw fields."""

    __slots__ = ("_fields", "encoding", "name", "sequence")

    def __init__(
        self, name: str, fields: list[str], encoding: EncodingCharacters, sequence: int
    ) -> None:
        self.name = name
        self.sequence = sequence
        self.encoding = encoding
        # _fields[n] is field n. For MSH, _fields[1] is the field separator (MSH-1).
        self._fields = fields

    def __repr__(self) -> str:
        return f"<Segment {self.name}[{self.sequence}]>"

    @property
    def field_count(self) -> int:
        return len(self._fields) - 1

    def raw_field(self, number: int) -> str:
        """Raw ER7 text of field `number`, all repetitions included."""
        if number < len(self._fields):
            return self._fields[number]
        return ""

    def repetitions(self, number: int) -> list[FieldValue]:
        """Every repetition of field `number` (one empty repetition when the field is empty)."""
        raw = self.raw_field(number)
        if self.name == "MSH" and number <= 2:
            # MSH-1 and MSH-2 hold the delimiters themselves: never split or decode them.
            return [FieldValue(raw, _LITERAL)]
        if self.encoding.repetition not in raw:
            return [FieldValue(raw, self.encoding)]
        return [FieldValue(part, self.encoding) for part in raw.split(self.encoding.repetition)]

    def field(self, number: int, repetition: int = 1) -> FieldValue:
        """One repetition (from 1) of field `number`; an empty value when absent."""
        if repetition == 1 and self.encoding.repetition not in self.raw_field(number):
            return self.repetitions(number)[0]
        repetitions = self.repetitions(number)
        if repetition <= len(repetitions):
            return repetitions[repetition - 1]
        return _EMPTY_FIELD

    def value(self, number: int, component: int = 1, subcomponent: int = 1) -> str:
        """Decoded text of field `number`, first repetition, one component."""
        return self.field(number).component(component, subcomponent)


# Delimiters used to read MSH-1/MSH-2 without interpreting them (none of these occur there).
_LITERAL = EncodingCharacters("\x00", "\x01", "\x02", "\x03", "\x04")

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")


class Er7Message:
    """A tokenized message: segments in order, each addressable by id and occurrence."""

    __slots__ = ("encoding", "segments")

    def __init__(self, segments: list[Segment], encoding: EncodingCharacters) -> None:
        self.segments = segments
        self.encoding = encoding

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def first(self, name: str) -> Segment | None:
        for segment in self.segments:
            if segment.name == name:
                return segment
        return None

    def all(self, name: str) -> Iterator[Segment]:
        return (segment for segment in self.segments if segment.name == name)


def read_encoding_characters(first_segment: str) -> EncodingCharacters:
    """MSH-1 and MSH-2 from the first segment; NotAnHl7Message when they are unusable."""
    if not first_segment.startswith("MSH") or len(first_segment) < 8:
        raise NotAnHl7Message("the message does not start with an MSH segment")
    field_separator = first_segment[3]
    declared = first_segment[4:].split(field_separator, 1)[0]
    delimiters = field_separator + declared[:4]
    if (
        len(declared) not in (4, 5)
        or len(set(delimiters)) != 5
        or any(char.isalnum() or char.isspace() for char in delimiters)
    ):
        raise NotAnHl7Message("MSH-1/MSH-2 do not declare five distinct encoding characters")
    return EncodingCharacters(
        field=field_separator,
        component=declared[0],
        repetition=declared[1],
        escape=declared[2],
        subcomponent=declared[3],
    )


def parse_er7(text: str) -> Er7Message:
    """Tokenize a message. Raises NotAnHl7Message when it does not start with a usable MSH."""
    text = text.lstrip().lstrip("\ufeff")  # a byte order mark from Windows tools
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    lines = [line for line in text.split(SEGMENT_TERMINATOR) if line]
    if not lines:
        raise NotAnHl7Message("the message is empty")
    encoding = read_encoding_characters(lines[0])
    separator = encoding.field
    segments: list[Segment] = []
    occurrences: dict[str, int] = {}
    for index, line in enumerate(lines):
        parts = line.split(separator)
        name = parts[0]
        if not _SEGMENT_ID.fullmatch(name):
            raise NotAnHl7Message(f"segment {index + 1} does not start with a segment id")
        if name == "MSH":
            if index != 0:
                raise NotAnHl7Message("a second MSH segment inside one message")
            parts.insert(1, separator)  # MSH-1 is the separator itself
        sequence = occurrences.get(name, 0) + 1
        occurrences[name] = sequence
        segments.append(Segment(name, parts, encoding, sequence))
    return Er7Message(segments, encoding)


# --- character sets -------------------------------------------------------------------------

# MSH-18 values (HL7 table 0211) to Python codecs. Those left out (UTF-16/32, ISO 2022 variants)
# cannot be read with an ASCII MSH anyway or are not seen from European/US HIS systems.
_CHARACTER_SETS = {
    "ASCII": "ascii",
    "8859/1": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "ISO IR6": "ascii",
    "ISO IR100": "iso8859-1",
    "ISO IR192": "utf-8",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "GB 18030-2000": "gb18030",
    "BIG-5": "big5",
    "KS X 1001": "euc-kr",
}


def codec_for(character_set: str) -> str | None:
    """Python codec for an MSH-18 value, None when unknown or empty."""
    return _CHARACTER_SETS.get(character_set.strip().upper())


def declared_character_set(raw: bytes) -> str:
    """MSH-18 (first repetition, first component) read from the raw bytes, '' when absent."""
    end = len(raw)
    for terminator in (b"\r", b"\n"):
        found = raw.find(terminator)
        if 0 <= found < end:
            end = found
    msh = raw[:end].lstrip()
    if not msh.startswith(b"MSH") or len(msh) < 8:
        return ""
    fields = msh.split(msh[3:4])
    if len(fields) < 18:
        return ""
    component, repetition = msh[4:5], msh[5:6]
    value = fields[17].split(repetition)[0].split(component)[0]
    return value.decode("ascii", errors="replace").strip()


def decode_message(raw: bytes) -> str:
    """Bytes to text using MSH-18; undeclared or wrong: UTF-8, then Latin-1 (never fails).

    HL7's default is ASCII, but HIS systems commonly send UTF-8 or Latin-1 without saying so;
    Latin-1 maps every byte, so a message is never lost to a charset error.
    """
    codec = codec_for(declared_character_set(raw))
    for candidate in (codec, "utf-8"):
        if candidate is None:
            continue
        try:
            return raw.decode(candidate)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def encode_message(text: str, character_set: str = "") -> bytes:
    """Text to bytes in the MSH-18 character set (UTF-8 when empty or unknown)."""
    codec = codec_for(character_set) or "utf-8"
    return text.encode(codec, errors="replace")
