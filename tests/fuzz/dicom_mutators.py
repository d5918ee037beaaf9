"""Byte-level DICOM mutations guided by a small element walker.

Mutating the bytes rather than a pydicom Dataset lets a mutation produce what pydicom would refuse to write
(wrong declared lengths, wrong VRs, malformed numbers, deep nesting, a transfer syntax that does not match
the encoding), and keeps the rest of the file exactly as the scanner wrote it.

The walker understands only what the seed files need: preamble + file meta (explicit little endian), then a
dataset in implicit little, explicit little or explicit big endian, with sequences and encapsulated pixel
data. It is best effort: on anything it does not understand it stops and returns what it found, and the
mutators fall back to the generic byte mutations.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, tag_for_keyword

#: Injected into text values; it must never appear in a rejection reason, a log record or a warning.
CANARY = "Zq7PHI"

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_DELIM, SEQ_DELIM = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
TS_TAG = 0x00020010
META_LENGTH_TAG = 0x00020000

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_ALL_VRS = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD",
    b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI",
    b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
]  # fmt: skip

IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
TRANSFER_SYNTAXES = [
    IMPLICIT_LE,
    EXPLICIT_LE,
    EXPLICIT_BE,
    DEFLATED,
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.5",  # RLE lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2 (no decoder)
    "1.2.840.10008.1.2.8.1",  # SMPTE ST 2110-20 (no decoder)
    "1.2.3.4",  # not a transfer syntax
    "",
    "1.2.840.10008.1.2.1 ",
    "abc",
]


@dataclass(frozen=True)
class Elem:
    """One element (or item, delimiter, pixel fragment) found by :func:`walk`; offsets into the file."""

    offset: int
    tag: int
    vr: bytes | None  # explicit VR, None for implicit VR and for items/delimiters
    len_offset: int
    len_size: int  # 2 or 4
    length: int  # as declared
    value_offset: int
    depth: int  # 0: top level (file meta included)
    kind: str  # meta | element | item | delim | fragment
    little: bool  # byte order of the tag and length fields

    @property
    def end(self) -> int:
        return self.value_offset + (0 if self.length == UNDEFINED else self.length)


@dataclass
class Layout:
    elems: list[Elem]
    transfer_syntax: str | None
    explicit: bool
    little: bool
    dataset_start: int
    complete: bool  # the walker reached the end of the file without giving up

    def top(self) -> list[Elem]:
        return [e for e in self.elems if e.depth == 0 and e.kind == "element"]

    def find(self, tag: int) -> Elem | None:
        return next((e for e in self.elems if e.tag == tag and e.depth == 0 and e.kind != "item"), None)


class _Stop(Exception):
    pass


def walk(data: bytes, max_elems: int = 50_000) -> Layout:
    """Locate the elements of a DICOM file (see the module docstring for what is understood)."""
    elems: list[Elem] = []
    pos = 0
    ts: str | None = None
    has_meta = len(data) >= 132 and data[128:132] == b"DICM"
    if has_meta:
        pos = 132
        while pos + 8 <= len(data) and struct.unpack_from("<H", data, pos)[0] == 0x0002:
            e = _header(data, pos, explicit=True, little=True, depth=0, kind="meta")
            if e is None or e.length == UNDEFINED or e.end > len(data):
                return Layout(elems, ts, True, True, pos, False)
            elems.append(e)
            if e.tag == TS_TAG:
                ts = data[e.value_offset : e.end].rstrip(b"\0 ").decode("ascii", "replace")
            pos = e.end
    if ts == DEFLATED:
        return Layout(elems, ts, True, True, pos, False)
    if ts == IMPLICIT_LE:
        explicit, little = False, True
    elif ts == EXPLICIT_BE:
        explicit, little = True, False
    elif ts is not None:
        explicit, little = True, True
    else:  # no meta: guess from the bytes where a VR would be
        vr = data[pos + 4 : pos + 6]
        explicit, little = (len(vr) == 2 and vr.isalpha() and vr.isupper()), True
    layout = Layout(elems, ts, explicit, little, pos, False)
    try:
        end = _dataset(data, pos, len(data), layout, 0, max_elems)
        layout.complete = end >= len(data)
    except _Stop:
        pass
    return layout


def _header(data: bytes, pos: int, *, explicit: bool, little: bool, depth: int, kind: str) -> Elem | None:
    if pos + 8 > len(data):
        return None
    bo = "<" if little else ">"
    group, element = struct.unpack_from(bo + "HH", data, pos)
    tag = (group << 16) | element
    if group == 0xFFFE:
        length = struct.unpack_from(bo + "I", data, pos + 4)[0]
        kind = "item" if tag == ITEM else "delim"
        return Elem(pos, tag, None, pos + 4, 4, length, pos + 8, depth, kind, little)
    if explicit:
        vr = bytes(data[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                return None
            length = struct.unpack_from(bo + "I", data, pos + 8)[0]
            return Elem(pos, tag, vr, pos + 8, 4, length, pos + 12, depth, kind, little)
        length = struct.unpack_from(bo + "H", data, pos + 6)[0]
        return Elem(pos, tag, vr, pos + 6, 2, length, pos + 8, depth, kind, little)
    length = struct.unpack_from(bo + "I", data, pos + 4)[0]
    return Elem(pos, tag, None, pos + 4, 4, length, pos + 8, depth, kind, little)


def _is_sequence(e: Elem) -> bool:
    if e.vr is not None:
        return e.vr == b"SQ"
    try:
        return dictionary_VR(e.tag) == "SQ"
    except KeyError:
        return e.length == UNDEFINED  # pydicom reads an unknown undefined-length element as a sequence


def _dataset(data: bytes, pos: int, end: int, layout: Layout, depth: int, max_elems: int) -> int:
    """Walk elements from ``pos`` until ``end`` or an item delimiter; returns the position after them."""
    while pos < end:
        e = _header(data, pos, explicit=layout.explicit, little=layout.little, depth=depth, kind="element")
        if e is None or len(layout.elems) >= max_elems:
            raise _Stop
        layout.elems.append(e)
        if e.tag == ITEM_DELIM:
            return e.value_offset
        if e.kind != "element":
            raise _Stop
        if e.tag in PIXEL_TAGS and e.length == UNDEFINED:
            pos = _fragments(data, e.value_offset, layout, depth + 1, max_elems)
        elif _is_sequence(e) and depth < 64:
            stop = None if e.length == UNDEFINED else e.value_offset + e.length
            pos = _sequence(data, e.value_offset, stop, layout, depth + 1, max_elems)
        elif e.length == UNDEFINED:
            raise _Stop
        else:
            pos = e.value_offset + e.length
    return pos


def _sequence(data: bytes, pos: int, stop: int | None, layout: Layout, depth: int, max_elems: int) -> int:
    limit = len(data) if stop is None else min(stop, len(data))
    while pos < limit:
        e = _header(data, pos, explicit=False, little=layout.little, depth=depth, kind="item")
        if e is None or len(layout.elems) >= max_elems:
            raise _Stop
        layout.elems.append(e)
        if e.tag == SEQ_DELIM:
            return e.value_offset
        if e.tag != ITEM:
            raise _Stop
        if e.length == UNDEFINED:
            pos = _dataset(data, e.value_offset, len(data), layout, depth, max_elems)
        else:
            _dataset(data, e.value_offset, min(e.end, len(data)), layout, depth, max_elems)
            pos = e.end
    return pos


def _fragments(data: bytes, pos: int, layout: Layout, depth: int, max_elems: int) -> int:
    while pos < len(data):
        e = _header(data, pos, explicit=False, little=layout.little, depth=depth, kind="fragment")
        if e is None or len(layout.elems) >= max_elems:
            raise _Stop
        if e.tag == SEQ_DELIM:
            layout.elems.append(_as(e, "delim"))
            return e.value_offset
        if e.tag != ITEM or e.length == UNDEFINED:
            raise _Stop
        layout.elems.append(_as(e, "fragment"))
        pos = e.end
    return pos


def _as(e: Elem, kind: str) -> Elem:
    return Elem(
        e.offset, e.tag, e.vr, e.len_offset, e.len_size, e.length, e.value_offset, e.depth, kind, e.little
    )


# --------------------------------------------------------------------------------------------------
# encoding helpers


def _pack_len(e: Elem, value: int) -> bytes:
    bo = "<" if e.little else ">"
    if e.len_size == 2:
        return struct.pack(bo + "H", value & 0xFFFF)
    return struct.pack(bo + "I", value & 0xFFFFFFFF)


def _encode_element(tag: int, vr: str, value: bytes, *, explicit: bool, little: bool) -> bytes:
    bo = "<" if little else ">"
    head = struct.pack(bo + "HH", tag >> 16, tag & 0xFFFF)
    if not explicit:
        return head + struct.pack(bo + "I", len(value)) + value
    vrb = vr.encode("ascii")
    if vrb in _LONG_VRS:
        return head + vrb + b"\0\0" + struct.pack(bo + "I", len(value)) + value
    return head + vrb + struct.pack(bo + "H", min(len(value), 0xFFFF)) + value[:0xFFFF]


def _pad(value: bytes, vr: str) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    return value


def _replace(data: bytes, start: int, stop: int, new: bytes) -> bytes:
    return data[:start] + new + data[stop:]


def _fix_meta_length(data: bytes) -> bytes:
    """Recompute (0002,0000) after a meta element changed size (as a careful writer would)."""
    layout = walk(data)
    group = layout.find(META_LENGTH_TAG)
    meta = [e for e in layout.elems if e.kind == "meta"]
    if group is None or not meta or group.length != 4:
        return data
    total = meta[-1].end - group.end
    return _replace(data, group.value_offset, group.end, struct.pack("<I", total))


# --------------------------------------------------------------------------------------------------
# header values

_US_VALUES = [
    0, 1, 2, 3, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32, 33, 63, 64, 65, 255, 256, 4096, 32767, 32768, 65535,
]  # fmt: skip
_IS_VALUES = [
    "0", "-1", "1", "2", "3", "1000", "65536", "2147483647", "2147483648", "-2147483649",
    "99999999999", "1e3", "1.5", "", " ", "abc", "1\\2", "+5", CANARY,
]  # fmt: skip
_DS_VALUES = [
    "0", "-0", "1", "-1", "0.5", "nan", "NaN", "inf", "-inf", "1e308", "-1e308", "1e-320", "3.4e38", "1e39",
    "abc", "", "1e", "0x10", "1,5", CANARY,
]  # fmt: skip
_CS_VALUES = {
    "PhotometricInterpretation": ["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL",
                                  "YBR_FULL_422", "", "MONOCHROME2\\RGB", "monochrome2", CANARY],
    "Modality": ["MR", "CT", "SEG", "RTDOSE", "", "M\\R", "mr", CANARY],
    "ImageType": ["ORIGINAL\\PRIMARY\\MOSAIC", "DERIVED\\SECONDARY", "", "\\\\\\", CANARY],
    "SpecificCharacterSet": ["ISO_IR 192", "ISO_IR 100", "ISO 2022 IR 87", "ISO 2022 IR 6\\ISO 2022 IR 87",
                             "GB18030", "", "NOT A CHARSET", "\\", CANARY],
}  # fmt: skip
_UI_VALUES = [
    "",
    "1.2",
    "1.2.840.10008.5.1.4.1.1.66.4",  # SEG
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT dose
    "1.2.840.10008.5.1.4.1.1.4.1",  # enhanced MR
    "1.2.840.10008.5.1.4.1.1.7",  # secondary capture
    "1.2.840.10008.1.3.10",  # media storage directory
    "abc",
    "1." + "2" * 70,
    "1.2." * 60,
    "1.2\x00.3",
    f"1.2.{CANARY}",
]
_TEXT_VALUES = [CANARY, f"{CANARY}^Doe^J", f"\\{CANARY}\\", f"{CANARY}" * 40, "", f"{CANARY}\u00e9"]

#: keyword → (VR used when encoding, number of values, value pool). Values pools are lists of strings
#: (text VRs) or ints (binary VRs); "text" means a free text element that carries the canary.
HEADER_FIELDS: dict[str, tuple[str, int, list]] = {
    "Rows": ("US", 1, _US_VALUES),
    "Columns": ("US", 1, _US_VALUES),
    "BitsAllocated": ("US", 1, _US_VALUES),
    "BitsStored": ("US", 1, _US_VALUES),
    "HighBit": ("US", 1, _US_VALUES),
    "PixelRepresentation": ("US", 1, _US_VALUES),
    "SamplesPerPixel": ("US", 1, _US_VALUES),
    "PlanarConfiguration": ("US", 1, _US_VALUES),
    "NumberOfFrames": ("IS", 1, _IS_VALUES),
    "InstanceNumber": ("IS", 1, _IS_VALUES),
    "PixelSpacing": ("DS", 2, _DS_VALUES),
    "ImagePositionPatient": ("DS", 3, _DS_VALUES),
    "ImageOrientationPatient": ("DS", 6, _DS_VALUES),
    "SliceThickness": ("DS", 1, _DS_VALUES),
    "SpacingBetweenSlices": ("DS", 1, _DS_VALUES),
    "RescaleSlope": ("DS", 1, _DS_VALUES),
    "RescaleIntercept": ("DS", 1, _DS_VALUES),
    "SliceLocation": ("DS", 1, _DS_VALUES),
    "PhotometricInterpretation": ("CS", 1, _CS_VALUES["PhotometricInterpretation"]),
    "Modality": ("CS", 1, _CS_VALUES["Modality"]),
    "ImageType": ("CS", 1, _CS_VALUES["ImageType"]),
    "SpecificCharacterSet": ("CS", 1, _CS_VALUES["SpecificCharacterSet"]),
    "SOPClassUID": ("UI", 1, _UI_VALUES),
    "SeriesInstanceUID": ("UI", 1, _UI_VALUES),
    "StudyInstanceUID": ("UI", 1, _UI_VALUES),
    "FrameOfReferenceUID": ("UI", 1, _UI_VALUES),
    "PatientID": ("LO", 1, _TEXT_VALUES),
    "PatientName": ("PN", 1, _TEXT_VALUES),
    "SeriesDescription": ("LO", 1, _TEXT_VALUES),
    "InstitutionName": ("LO", 1, _TEXT_VALUES),
    "StudyDate": ("DA", 1, _TEXT_VALUES),
}


def _value_bytes(rng: random.Random, vr: str, n: int, pool: list, old: bytes, little: bool) -> bytes:
    bo = "<" if little else ">"
    if vr == "US":
        count = rng.choice([n, n, n, 0, n + 1])
        raw = b"".join(struct.pack(bo + "H", rng.choice(pool)) for _ in range(count))
        if rng.random() < 0.1:  # odd-sized binary value
            raw = raw[:-1] if raw else b"\x01"
        return raw
    if vr in ("DS", "IS") and n > 1:
        parts = old.rstrip(b" \0").decode("latin-1").split("\\")
        if len(parts) == n and rng.random() < 0.6:  # one component changed: the realistic case
            parts[rng.randrange(n)] = rng.choice(pool)
        else:
            parts = [rng.choice(pool) for _ in range(rng.choice([n, n, n - 1, n + 1, 1]))]
        text = "\\".join(parts)
    else:
        text = rng.choice(pool)
    encoding = "utf-8" if rng.random() < 0.5 else "latin-1"
    return _pad(text.encode(encoding, "replace"), vr)


def m_header_value(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Replace, insert or delete one of the attributes the reader depends on (or a PHI-bearing one)."""
    layout = walk(data)
    keyword = rng.choice(list(HEADER_FIELDS))
    vr, n, pool = HEADER_FIELDS[keyword]
    tag = tag_for_keyword(keyword)
    assert tag is not None
    elem = layout.find(tag)
    if elem is not None and rng.random() < 0.15:
        return _replace(data, elem.offset, elem.end, b""), f"header_delete:{keyword}"
    old = data[elem.value_offset : elem.end] if elem is not None else b""
    value = _value_bytes(rng, vr, n, pool, old, layout.little)
    if elem is not None:
        enc_vr = elem.vr.decode("ascii", "replace") if elem.vr else vr
        new = _encode_element(tag, enc_vr, value, explicit=elem.vr is not None, little=elem.little)
        return _replace(data, elem.offset, elem.end, new), f"header_value:{keyword}"
    top = [e for e in layout.top() if e.kind == "element"]
    if not top:
        return m_bitflip(rng, data)
    after = next((e for e in top if e.tag > tag), None)
    at = after.offset if after is not None else top[-1].end
    new = _encode_element(tag, vr, value, explicit=layout.explicit, little=layout.little)
    return _replace(data, at, at, new), f"header_insert:{keyword}"


# --------------------------------------------------------------------------------------------------
# structure: lengths, VRs, tags, nesting, transfer syntax


def m_length(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Declare a wrong value length (too long, too short, odd, zero, undefined) on one element or item."""
    layout = walk(data)
    if not layout.elems:
        return m_bitflip(rng, data)
    # Elements near the top matter most; pixel data and items get their share through the pool.
    elem = rng.choice(layout.elems)
    remaining = len(data) - elem.value_offset
    if elem.len_size == 2:
        choices = [0, 1, elem.length - 1, elem.length + 1, elem.length + 2, 0xFFFF, 0xFFFE, remaining]
    else:
        choices = [
            0, 1, elem.length - 1, elem.length + 1, elem.length * 2, remaining, remaining + 1,
            UNDEFINED, 0xFFFFFFFE, 0xFFFFFFF0, 0x7FFFFFFF, 0x80000000, rng.getrandbits(32),
        ]  # fmt: skip
    value = max(0, rng.choice(choices))
    start = elem.len_offset
    return _replace(data, start, start + elem.len_size, _pack_len(elem, value)), f"length:{elem.kind}"


def m_vr(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    layout = walk(data)
    with_vr = [e for e in layout.elems if e.vr is not None]
    if not with_vr:
        return m_length(rng, data)
    elem = rng.choice(with_vr)
    new = rng.choice(_ALL_VRS) if rng.random() < 0.8 else bytes(rng.getrandbits(8) for _ in range(2))
    return _replace(data, elem.offset + 4, elem.offset + 6, new), "vr"


def m_tag(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Give an element another tag: a delimiter, pixel data, a meta tag, a private or random tag."""
    layout = walk(data)
    if not layout.elems:
        return m_bitflip(rng, data)
    elem = rng.choice(layout.elems)
    tag = rng.choice(
        [ITEM, ITEM_DELIM, SEQ_DELIM, 0x7FE00010, TS_TAG, 0x00280010, 0x00091010, 0x00000000, 0xFFFFFFFF]
        + [rng.getrandbits(32)]
    )
    bo = "<" if elem.little else ">"
    new = struct.pack(bo + "HH", tag >> 16, tag & 0xFFFF)
    return _replace(data, elem.offset, elem.offset + 4, new), "tag"


def m_element_order(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Drop, duplicate or swap whole top-level elements (pydicom expects ascending tags, unique)."""
    top = [e for e in walk(data).top() if e.length != UNDEFINED]
    if len(top) < 2:
        return m_bitflip(rng, data)
    a = rng.randrange(len(top))
    ea = top[a]
    what = rng.choice(["drop", "duplicate", "swap"])
    if what == "drop":
        return _replace(data, ea.offset, ea.end, b""), "element_drop"
    if what == "duplicate":
        return _replace(data, ea.end, ea.end, data[ea.offset : ea.end]), "element_duplicate"
    b = rng.randrange(len(top))
    first, second = sorted((ea, top[b]), key=lambda e: e.offset)
    if first.offset == second.offset:
        return data, "element_swap"
    out = (
        data[: first.offset]
        + data[second.offset : second.end]
        + data[first.end : second.offset]
        + data[first.offset : first.end]
        + data[second.end :]
    )
    return out, "element_swap"


def nested_sequence(
    depth: int, *, explicit: bool, little: bool, defined: bool, tag: int = 0x00081140
) -> bytes:
    """``depth`` sequences each holding one item holding the next sequence (undefined or defined lengths)."""
    bo = "<" if little else ">"

    def sq(length: int) -> bytes:
        head = struct.pack(bo + "HH", tag >> 16, tag & 0xFFFF)
        if explicit:
            return head + b"SQ\0\0" + struct.pack(bo + "I", length)
        return head + struct.pack(bo + "I", length)

    def item(tag_: int, length: int) -> bytes:
        return struct.pack(bo + "HHI", tag_ >> 16, tag_ & 0xFFFF, length)

    if not defined:
        return (sq(UNDEFINED) + item(ITEM, UNDEFINED)) * depth + (
            item(ITEM_DELIM, 0) + item(SEQ_DELIM, 0)
        ) * depth
    per_level = len(sq(0)) + 8
    # content length inside the item of level i (0 = outermost) is what the deeper levels take
    return b"".join(
        sq(8 + per_level * (depth - 1 - i)) + item(ITEM, per_level * (depth - 1 - i)) for i in range(depth)
    )


def m_nested(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Insert a deeply nested (or very wide) sequence among the top-level elements."""
    layout = walk(data)
    top = layout.top()
    depth = rng.choice([2, 10, 64, 200, 500, 1000, 3000])
    defined = rng.random() < 0.4
    tag = rng.choice([0x00081140, 0x00091010, 0x52009229, 0x00400275])
    if rng.random() < 0.2:  # wide instead of deep: many empty items
        bo = "<" if layout.little else ">"
        n = rng.choice([1000, 20000])
        body = struct.pack(bo + "HHI", 0xFFFE, 0xE000, 0) * n
        blob = _encode_element(tag, "SQ", body, explicit=layout.explicit, little=layout.little)
        name = f"wide_sq:{n}"
    else:
        blob = nested_sequence(
            depth, explicit=layout.explicit, little=layout.little, defined=defined, tag=tag
        )
        name = f"nested_sq:{depth}:{'defined' if defined else 'undefined'}"
    if top:
        after = next((e for e in top if e.tag > tag), None)
        at = after.offset if after is not None else top[-1].end
    else:
        at = layout.dataset_start
    return _replace(data, at, at, blob), name


def m_transfer_syntax(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Declare another transfer syntax without re-encoding the dataset."""
    layout = walk(data)
    elem = layout.find(TS_TAG)
    if elem is None:
        return m_header_value(rng, data)
    uid = rng.choice(TRANSFER_SYNTAXES)
    value = _pad(uid.encode("ascii"), "UI")
    new = _encode_element(TS_TAG, "UI", value, explicit=True, little=True)
    out = _replace(data, elem.offset, elem.end, new)
    if rng.random() < 0.7:
        out = _fix_meta_length(out)
    return out, f"transfer_syntax:{uid or 'empty'}"


_ZERO_BLOCKS: bytes | None = None


def m_deflate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Re-encode an explicit little endian file with the deflated transfer syntax: faithfully, or with a
    private element of 1 GiB of zeros appended inside the deflate stream (a bomb of about 1 MB)."""
    global _ZERO_BLOCKS
    layout = walk(data)
    meta_end = layout.dataset_start
    if layout.transfer_syntax != EXPLICIT_LE or meta_end < 132:
        return m_transfer_syntax(rng, data)
    out, _ = _set_transfer_syntax(data, DEFLATED)
    meta_end += len(out) - len(data)
    dataset = data[layout.dataset_start :]
    head = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    if rng.random() < 0.5:
        return out[:meta_end] + head.compress(dataset) + head.flush(), "deflate"
    if _ZERO_BLOCKS is None:
        # Blocks of a fresh compressor ended by a full flush refer to nothing before them, so one 16 MiB
        # run of them can be repeated to inflate to any size.
        zeros = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        _ZERO_BLOCKS = zeros.compress(b"\0" * (16 << 20)) + zeros.flush(zlib.Z_FULL_FLUSH)
    size = 64 * (16 << 20)
    element = struct.pack("<HH2sHI", 0x0029, 0x1010, b"OB", 0, size)
    stream = head.compress(dataset + element) + head.flush(zlib.Z_FULL_FLUSH)
    stream += _ZERO_BLOCKS * 64 + zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
    return out[:meta_end] + stream, "deflate_bomb"


def _set_transfer_syntax(data: bytes, uid: str) -> tuple[bytes, Elem | None]:
    elem = walk(data).find(TS_TAG)
    if elem is None:
        return data, None
    new = _encode_element(TS_TAG, "UI", _pad(uid.encode("ascii"), "UI"), explicit=True, little=True)
    return _fix_meta_length(_replace(data, elem.offset, elem.end, new)), elem


# --------------------------------------------------------------------------------------------------
# pixel data


def m_pixels(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    layout = walk(data)
    pix = next((e for e in layout.elems if e.depth == 0 and e.tag in PIXEL_TAGS), None)
    if pix is None:
        return m_truncate(rng, data)
    if pix.length == UNDEFINED:
        return _encapsulated(rng, data, layout, pix)
    n = min(pix.length, len(data) - pix.value_offset)
    what = rng.choice(["cut", "cut_file", "extend", "junk", "fill", "nan", "empty"])
    if what == "cut" and n > 0:
        k = rng.choice([1, 2, max(1, n // 2), max(1, n - 1)])
        out = _replace(data, pix.value_offset + n - k, pix.value_offset + n, b"")
        out = _replace(out, pix.len_offset, pix.len_offset + pix.len_size, _pack_len(pix, n - k))
        return out, "pixels_cut"
    if what == "cut_file":
        return data[: pix.value_offset + rng.randrange(max(1, n))], "pixels_truncated_file"
    if what == "extend":
        k = rng.choice([1, 2, 3, 1024])
        out = _replace(
            data, pix.value_offset + n, pix.value_offset + n, bytes(rng.getrandbits(8) for _ in range(k))
        )
        out = _replace(out, pix.len_offset, pix.len_offset + pix.len_size, _pack_len(pix, n + k))
        return out, "pixels_extended"
    if what == "empty":
        out = _replace(data, pix.value_offset, pix.value_offset + n, b"")
        return _replace(out, pix.len_offset, pix.len_offset + pix.len_size, _pack_len(pix, 0)), "pixels_empty"
    if what == "nan":
        # NaN/Inf bit patterns: only float pixel data can carry them, integer data just gets odd values
        buf = bytearray(data)
        nan32, inf32, ninf32, nan32_be = b"\0\0\xc0\x7f", b"\0\0\x80\x7f", b"\0\0\x80\xff", b"\x7f\xc0\0\0"
        pattern = rng.choice([nan32, inf32, ninf32, nan32_be])
        for _ in range(rng.choice([1, 10])):
            if n >= 4:
                at = pix.value_offset + 4 * rng.randrange(n // 4)
                buf[at : at + 4] = pattern
        return bytes(buf), "pixels_nan"
    buf = bytearray(data)
    if what == "fill":
        byte = rng.choice([0x00, 0xFF, 0x80, 0x7F])
        buf[pix.value_offset : pix.value_offset + n] = bytes([byte]) * n
        return bytes(buf), "pixels_fill"
    for _ in range(rng.choice([1, 16, 256])):
        if n:
            buf[pix.value_offset + rng.randrange(n)] = rng.getrandbits(8)
    return bytes(buf), "pixels_junk"


def _encapsulated(rng: random.Random, data: bytes, layout: Layout, pix: Elem) -> tuple[bytes, str]:
    frags = [e for e in layout.elems if e.kind == "fragment" and e.offset > pix.offset]
    if not frags:
        return m_truncate(rng, data)
    bot, rest = frags[0], frags[1:] or frags
    what = rng.choice(["corrupt_head", "corrupt_body", "cut", "bot", "drop_delimiter", "empty_fragment"])
    frag = rng.choice(rest)
    buf = bytearray(data)
    if what == "corrupt_head" and frag.length:
        for _ in range(rng.choice([1, 4, 16])):
            buf[frag.value_offset + rng.randrange(min(64, frag.length))] = rng.getrandbits(8)
    elif what == "corrupt_body" and frag.length:
        for _ in range(rng.choice([1, 16, 256])):
            buf[frag.value_offset + rng.randrange(frag.length)] = rng.getrandbits(8)
    elif what == "cut" and frag.length:
        keep = rng.randrange(frag.length)
        out = _replace(data, frag.value_offset + keep, frag.end, b"")
        return _replace(out, frag.len_offset, frag.len_offset + 4, _pack_len(frag, keep)), "fragment_cut"
    elif what == "bot":
        bo = "<" if bot.little else ">"
        offsets = struct.pack(bo + "II", rng.getrandbits(32), 0xFFFFFFFF)
        new = struct.pack(bo + "HHI", 0xFFFE, 0xE000, len(offsets)) + offsets
        return _replace(data, bot.offset, bot.end, new), "fragment_bot"
    elif what == "drop_delimiter":
        delim = next((e for e in layout.elems if e.kind == "delim" and e.offset > pix.offset), None)
        if delim is not None:
            return _replace(data, delim.offset, delim.value_offset, b""), "fragment_no_delimiter"
    elif what == "empty_fragment":
        bo = "<" if frag.little else ">"
        return _replace(data, frag.offset, frag.offset, struct.pack(bo + "HHI", 0xFFFE, 0xE000, 0)), (
            "fragment_empty"
        )
    return bytes(buf), f"fragment_{what}"


# --------------------------------------------------------------------------------------------------
# generic bytes


def _offset(rng: random.Random, data: bytes) -> int:
    """An offset, mostly in the header region (before the pixel data), where a change matters most."""
    if not data:
        return 0
    layout = walk(data)
    pix = next((e for e in layout.elems if e.depth == 0 and e.tag in PIXEL_TAGS), None)
    header_end = pix.value_offset if pix is not None else len(data)
    if rng.random() < 0.8 and header_end > 0:
        return rng.randrange(min(header_end, len(data)))
    return rng.randrange(len(data))


def m_bitflip(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    if not data:
        return data, "bitflip"
    buf = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        at = _offset(rng, data)
        buf[at] ^= 1 << rng.randrange(8)
    return bytes(buf), "bitflip"


def m_insert(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at = _offset(rng, data)
    k = rng.choice([1, 2, 3, 4, 8, 64])
    blob = bytes(rng.getrandbits(8) for _ in range(k)) if rng.random() < 0.5 else b"\xff" * k
    return _replace(data, at, at, blob), "insert"


def m_delete(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at = _offset(rng, data)
    k = rng.choice([1, 2, 3, 4, 8, 64])
    return _replace(data, at, at + k, b""), "delete"


def m_interesting(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Overwrite 1, 2 or 4 bytes with boundary values (0, -1, max, sign bit)."""
    if not data:
        return data, "interesting"
    at = _offset(rng, data)
    blob = rng.choice(
        [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\xff\x7f", b"\x00\x80",
         b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80"]
    )  # fmt: skip
    return _replace(data, at, at + len(blob), blob), "interesting"


def m_truncate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    if not data:
        return data, "truncate"
    layout = walk(data)
    points = [0, 1, 128, 131, 132, len(data) - 1] + [e.offset + rng.randrange(12) for e in layout.elems[:400]]
    at = rng.choice(points) if rng.random() < 0.7 else rng.randrange(len(data))
    return data[: max(0, min(at, len(data) - 1))], "truncate"


def m_empty(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    return rng.choice([b"", b"\0" * 128 + b"DICM", b"\0" * 132, data[:132]]), "empty"


#: name → (mutator, weight)
MUTATORS: dict[str, tuple[Callable[[random.Random, bytes], tuple[bytes, str]], float]] = {
    "header_value": (m_header_value, 6.0),
    "length": (m_length, 3.0),
    "vr": (m_vr, 1.0),
    "tag": (m_tag, 1.0),
    "element_order": (m_element_order, 1.0),
    "nested": (m_nested, 1.5),
    "transfer_syntax": (m_transfer_syntax, 2.0),
    "deflate": (m_deflate, 0.3),
    "pixels": (m_pixels, 3.0),
    "bitflip": (m_bitflip, 2.0),
    "insert": (m_insert, 1.0),
    "delete": (m_delete, 1.0),
    "interesting": (m_interesting, 1.0),
    "truncate": (m_truncate, 1.5),
    "empty": (m_empty, 0.2),
}


def mutate(rng: random.Random, data: bytes, n: int) -> tuple[bytes, list[str]]:
    """Apply ``n`` mutations drawn by weight; returns the new bytes and what was done."""
    names = list(MUTATORS)
    weights = [MUTATORS[k][1] for k in names]
    done: list[str] = []
    for _ in range(n):
        fn = MUTATORS[rng.choices(names, weights)[0]][0]
        data, what = fn(rng, data)
        done.append(what)
    return data, done
