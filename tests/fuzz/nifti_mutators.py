"""NIfTI-1/-2 mutations: header fields through nibabel's own header layout, data and compression damage.

Sources are real reference volumes (dicom2nifti_reference/*.nii.gz) and small images written by nibabel from
random arrays, so that every datatype nibabel writes (complex, RGB, 64-bit) is a starting point too.
"""

from __future__ import annotations

import gzip
import io
import random
import struct
import zlib

import nibabel as nib
import numpy as np

from tests.fuzz.dicom_mutators import CANARY

_NAN, _INF = float("nan"), float("inf")
_FLOATS = [_NAN, _INF, -_INF, 0.0, -0.0, 1e38, -1e38, 3.4e38, 1e-45, 1e-30, 1e30, -1.0, 2.0]
_DTYPES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304,
           3, 17, 255, 9999, -1, 32767]  # fmt: skip


def _header_class(data: bytes) -> tuple[type[nib.Nifti1Header], str] | None:
    """The header class and byte order of ``data`` (uncompressed), or None when it is not NIfTI."""
    if len(data) < 4:
        return None
    for order in ("<", ">"):
        size = struct.unpack_from(order + "i", data, 0)[0]
        if size == 348 and len(data) >= 348:
            return nib.Nifti1Header, order
        if size == 540 and len(data) >= 540:
            return nib.Nifti2Header, order
    return None


class _Fields:
    """The header of ``data`` as a writable structured record laid over a copy of its bytes."""

    def __init__(self, data: bytes) -> None:
        found = _header_class(data)
        assert found is not None
        self.cls, order = found
        dtype = self.cls.template_dtype.newbyteorder(order)
        self.size = dtype.itemsize
        self.buf = bytearray(data)
        self.rec = np.ndarray((), dtype=dtype, buffer=self.buf[: self.size]).copy()
        self.nifti2 = self.cls is nib.Nifti2Header

    def set(self, name: str, value: object, index: int | None = None) -> None:
        with np.errstate(over="ignore", invalid="ignore"):
            field = self.rec[name]
            if index is None:
                self.rec[name] = np.array(value).astype(field.dtype)
            else:
                field[index] = np.array(value).astype(field.dtype)
                self.rec[name] = field

    def get(self, name: str) -> np.ndarray:
        return self.rec[name]

    def bytes(self) -> bytes:
        self.buf[: self.size] = self.rec.tobytes()
        return bytes(self.buf)


def _int_dims(nifti2: bool) -> list[int]:
    values = [0, -1, 1, 2, 3, 4, 7, 8, 9, 255, -32768, 32767]
    if nifti2:
        values += [2**31, 2**31 - 1, 2**40, 2**62, -(2**63)]
    return values


def m_dim(rng: random.Random, f: _Fields) -> str:
    axis = rng.choice([0, 0, 1, 2, 3, 3, 4, 5, 7])
    if axis == 0:
        f.set("dim", rng.choice([0, -1, 1, 2, 3, 4, 5, 7, 8, 9, 255]), 0)
    else:
        f.set("dim", rng.choice(_int_dims(f.nifti2)), axis)
    return f"dim[{axis}]"


def m_huge(rng: random.Random, f: _Fields) -> str:
    """Declare a volume far larger than the data (the reader must not allocate first and check later)."""
    big = [2**31 - 1, 2**20, 2**16] if f.nifti2 else [32767, 16384]
    f.set("dim", 3, 0)
    for axis in (1, 2, 3):
        f.set("dim", rng.choice(big), axis)
    if rng.random() < 0.5:
        f.set("datatype", 64)
        f.set("bitpix", 64)
    return "huge_dims"


def m_datatype(rng: random.Random, f: _Fields) -> str:
    code = rng.choice(_DTYPES)
    f.set("datatype", code)
    if rng.random() < 0.6:  # a consistent bitpix makes nibabel go further
        bits = {1: 1, 2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32,
                1024: 64, 1280: 64, 1536: 128, 1792: 128, 2048: 256, 2304: 32}.get(code, 8)  # fmt: skip
        f.set("bitpix", bits)
    else:
        f.set("bitpix", rng.choice([0, 1, 7, 8, 16, 33, 255]))
    return f"datatype:{code}"


def m_scaling(rng: random.Random, f: _Fields) -> str:
    name = rng.choice(["scl_slope", "scl_inter"])
    f.set(name, rng.choice(_FLOATS))
    return name


def m_vox_offset(rng: random.Random, f: _Fields, file_size: int) -> str:
    base = 544 if f.nifti2 else 352
    value = rng.choice([0, 1, base - 4, base, base + 1, file_size, file_size + 1, file_size * 4, 2**31,
                        -base, _NAN, _INF, 1e30])  # fmt: skip
    if f.nifti2:
        value = int(value) if np.isfinite(value) and abs(value) < 2**63 else -1
    f.set("vox_offset", value)
    return "vox_offset"


def m_pixdim(rng: random.Random, f: _Fields) -> str:
    axis = rng.choice([0, 1, 2, 3, 4])
    f.set("pixdim", rng.choice(_FLOATS), axis)
    return f"pixdim[{axis}]"


def m_orientation(rng: random.Random, f: _Fields) -> str:
    what = rng.choice(["qform_code", "sform_code", "quatern", "srow"])
    if what in ("qform_code", "sform_code"):
        f.set(what, rng.choice([0, 1, 2, 3, 4, 5, -1, 255]))
    elif what == "quatern":
        f.set(rng.choice(["quatern_b", "quatern_c", "quatern_d", "qoffset_x"]), rng.choice(_FLOATS))
    else:
        row = rng.choice(["srow_x", "srow_y", "srow_z"])
        if rng.random() < 0.3:
            f.set(row, [0.0, 0.0, 0.0, 0.0])
        else:
            f.set(row, rng.choice(_FLOATS), rng.randrange(4))
    return f"orientation:{what}"


def m_identity_fields(rng: random.Random, f: _Fields) -> str:
    """sizeof_hdr, magic and free-text fields (the text fields carry the canary)."""
    what = rng.choice(["sizeof_hdr", "magic", "descrip", "aux_file", "intent_name"])
    if what == "sizeof_hdr":
        f.set(what, rng.choice([0, 347, 349, 540, 348, -1, 0x5C010000]))
    elif what == "magic":
        magic = rng.choice([b"ni1\0", b"n+1\0", b"n+2\0", b"\0\0\0\0", b"XXXX"])
        f.set(what, magic[: f.get("magic").dtype.itemsize])
    else:
        f.set(what, CANARY.encode("ascii"))
    return what


def _data_start(f: _Fields) -> int:
    offset = float(f.get("vox_offset"))
    return int(offset) if np.isfinite(offset) and 0 <= offset < 1e9 else f.size


def m_voxels_nonfinite(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """NaN/Inf voxels: the data is relabelled float32 (or float64) when it is not float already."""
    f = _Fields(data)
    code = int(f.get("datatype"))
    if code not in (16, 64):
        code = rng.choice([16, 64])
        f.set("datatype", code)
        f.set("bitpix", 32 if code == 16 else 64)
    out = bytearray(f.bytes())
    start = _data_start(f)
    width = 4 if code == 16 else 8
    order = "<" if f.rec.dtype.byteorder in "<=|" else ">"
    value = struct.pack(order + ("f" if width == 4 else "d"), rng.choice([_NAN, _INF, -_INF]))
    n = (len(out) - start) // width
    for _ in range(rng.choice([1, 10, 1000])):
        if n > 0:
            at = start + width * rng.randrange(n)
            out[at : at + width] = value
    return bytes(out), "nonfinite_voxels"


def m_extension(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Announce a header extension whose size field is wrong (zero, negative, odd, past the end)."""
    f = _Fields(data)
    start = f.size
    if len(data) < start + 4:
        return data, "extension"
    out = bytearray(data)
    out[start : start + 4] = b"\x01\0\0\0"
    esize = rng.choice([0, -8, 7, 8, 16, 2**31 - 1, len(data), -(2**31)])
    order = "<" if f.rec.dtype.byteorder in "<=|" else ">"
    blob = struct.pack(order + "ii", esize, rng.choice([0, 4, 6, 44, -1])) + CANARY.encode("ascii")
    blob += b"\0" * (-len(blob) % 16)
    out[start + 4 : start + 4] = blob
    f2 = _Fields(bytes(out))
    if rng.random() < 0.7:  # keep the data reachable (else the data offset now points inside the extension)
        f2.set("vox_offset", _data_start(f2) + len(blob))
    return f2.bytes(), f"extension:{esize}"


def m_header_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Bit flips, insertions, deletions, truncation within or around the header."""
    size = _Fields(data).size
    what = rng.choice(["bitflip", "insert", "delete", "truncate", "truncate_data", "append"])
    buf = bytearray(data)
    if what == "bitflip":
        for _ in range(rng.choice([1, 2, 8, 32])):
            at = rng.randrange(min(size + 4, len(buf)))
            buf[at] ^= 1 << rng.randrange(8)
        return bytes(buf), "header_bitflip"
    if what == "insert":
        at = rng.randrange(min(size + 4, len(buf)))
        blob = bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 4, 16])))
        return bytes(buf[:at]) + blob + bytes(buf[at:]), "header_insert"
    if what == "delete":
        at = rng.randrange(min(size + 4, len(buf)))
        return bytes(buf[:at]) + bytes(buf[at + rng.choice([1, 4, 16]) :]), "header_delete"
    if what == "truncate":
        return data[: rng.randrange(size + 4)], "truncate_header"
    if what == "truncate_data":
        start = size + 4
        return data[: start + rng.randrange(max(1, len(data) - start))], "truncate_data"
    return data + bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 3, 4096]))), "append"


def _apply_field_mutation(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    f = _Fields(data)
    pick = rng.choices(
        ["dim", "huge", "datatype", "scaling", "vox_offset", "pixdim", "orientation", "identity"],
        [3, 1, 3, 3, 2, 1, 2, 1],
    )[0]
    if pick == "dim":
        name = m_dim(rng, f)
    elif pick == "huge":
        name = m_huge(rng, f)
    elif pick == "datatype":
        name = m_datatype(rng, f)
    elif pick == "scaling":
        name = m_scaling(rng, f)
    elif pick == "vox_offset":
        name = m_vox_offset(rng, f, len(data))
    elif pick == "pixdim":
        name = m_pixdim(rng, f)
    elif pick == "orientation":
        name = m_orientation(rng, f)
    else:
        name = m_identity_fields(rng, f)
    return f.bytes(), name


def mutate(rng: random.Random, data: bytes, n: int) -> tuple[bytes, list[str]]:
    """Apply ``n`` mutations to an uncompressed NIfTI file. Once the header no longer parses as NIfTI, only
    byte mutations follow."""
    done: list[str] = []
    for _ in range(n):
        if _header_class(data) is None:
            buf = bytearray(data)
            if buf:
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            data, what = bytes(buf), "bitflip"
        else:
            kind = rng.choices(["field", "nonfinite", "extension", "bytes"], [7, 1.5, 1, 2])[0]
            if kind == "field":
                data, what = _apply_field_mutation(rng, data)
            elif kind == "nonfinite":
                data, what = m_voxels_nonfinite(rng, data)
            elif kind == "extension":
                data, what = m_extension(rng, data)
            else:
                data, what = m_header_bytes(rng, data)
        done.append(what)
    return data, done


# --------------------------------------------------------------------------------------------------
# compression


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=1) as gz:
        gz.write(data)
    return buf.getvalue()


def damage_gzip(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    what = rng.choice(["truncate", "flip", "crc", "trailing"])
    if what == "truncate":
        return blob[: rng.randrange(max(1, len(blob)))], "gzip_truncated"
    if what == "flip":
        buf = bytearray(blob)
        for _ in range(rng.choice([1, 4])):
            at = 10 + rng.randrange(max(1, len(buf) - 10))
            buf[min(at, len(buf) - 1)] ^= 1 << rng.randrange(8)
        return bytes(buf), "gzip_flipped"
    if what == "crc":
        return blob[:-8] + struct.pack("<II", rng.getrandbits(32), rng.getrandbits(32)), "gzip_bad_trailer"
    return blob + b"\x1f\x8b" + bytes(rng.getrandbits(8) for _ in range(10)), "gzip_trailing_junk"


_ZERO_MEMBER: bytes | None = None


def gzip_bomb(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A small .nii.gz that inflates to gigabytes of zeros: either a large image that is all there, or a
    small image whose vox_offset lies behind 1 GiB of zeros (the reader must not inflate its way there).

    Repeated gzip members of 16 MiB of zeros cost nothing to build and inflate like a real large volume.
    """
    global _ZERO_MEMBER
    if _ZERO_MEMBER is None:
        _ZERO_MEMBER = gzip.compress(b"\0" * (16 << 20), compresslevel=9, mtime=0)
    # sizes around pipeline.io.volume.MAX_READ_BYTES (raw + float32 bytes): 440^3 int16 and 400^3 float32
    # just below it, the others above; side 16 is the far-offset variant
    side, code, width = rng.choice(
        [
            (440, 4, 2),
            (400, 16, 4),
            (512, 2, 1),
            (640, 2, 1),
            (1024, 2, 1),
            (512, 16, 4),
            (1024, 4, 2),
            (16, 2, 1),
        ]
    )
    offset = 2**30 if side == 16 else 352
    hdr = nib.Nifti1Header()
    hdr["magic"] = b"n+1"
    hdr["vox_offset"] = offset
    hdr.set_data_dtype({2: np.uint8, 4: np.int16, 16: np.float32}[code])
    hdr.set_data_shape((side, side, side))
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_sform(np.eye(4), code=1)
    head = hdr.binaryblock + b"\0\0\0\0"
    total = offset + side**3 * width
    members = -(-total // (16 << 20))
    name = f"gzip_bomb:{side}^3x{width}B" + (f"@{offset}" if offset != 352 else "")
    return gzip.compress(head, mtime=0) + _ZERO_MEMBER * members, name


# --------------------------------------------------------------------------------------------------
# generated sources

_GEN_DTYPES = ["u1", "i1", "i2", "u2", "i4", "u4", "i8", "f4", "f8", "c8", "c16", "rgb", "rgba"]


def generated_source(rng: random.Random) -> tuple[bytes, str]:
    """A small NIfTI-1 or NIfTI-2 image written by nibabel: random shape, dtype, affine, forms."""
    ndim = rng.choices([2, 3, 4, 5], [1, 6, 2, 1])[0]
    shape = tuple(rng.choice([1, 2, 3, 5, 8, 16]) for _ in range(ndim))
    if ndim == 4 and rng.random() < 0.5:
        shape = (*shape[:3], 1)
    kind = rng.choice(_GEN_DTYPES)
    np_rng = np.random.default_rng(rng.getrandbits(32))
    if kind in ("rgb", "rgba"):
        fields = [(c, "u1") for c in ("R", "G", "B", "A")[: 3 if kind == "rgb" else 4]]
        arr = np.zeros(shape, dtype=fields)
        for name, _ in fields:
            arr[name] = np_rng.integers(0, 256, shape)
    elif kind[0] == "c":
        arr = (np_rng.normal(size=shape) + 1j * np_rng.normal(size=shape)).astype(kind)
    elif kind[0] == "f":
        arr = np_rng.normal(scale=rng.choice([1.0, 1e3, 1e30]), size=shape).astype(kind)
    else:
        info = np.iinfo(kind)
        arr = np_rng.integers(info.min, info.max, size=shape, dtype=kind, endpoint=True)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([rng.choice([0.5, 1.0, 2.5, -1.0]) for _ in range(3)])
    if rng.random() < 0.3:
        q, _ = np.linalg.qr(np_rng.normal(size=(3, 3)))
        affine[:3, :3] = q @ affine[:3, :3]
    affine[:3, 3] = np_rng.normal(scale=50, size=3)
    cls = nib.Nifti2Image if rng.random() < 0.3 else nib.Nifti1Image
    img = cls(arr, affine, dtype=arr.dtype)
    img.header.set_qform(affine, code=rng.choice([0, 1, 1, 2]))
    img.header.set_sform(affine, code=rng.choice([0, 1, 1, 2]))
    if rng.random() < 0.2:
        img.header.set_slope_inter(rng.choice([0.5, 2.0, -1.0]), rng.choice([0.0, 100.0]))
    name = f"generated:{cls.__name__}:{kind}:{'x'.join(map(str, shape))}"
    return img.to_bytes(), name


def inflate(blob: bytes) -> bytes:
    """Uncompressed bytes of a reference .nii.gz (read once per source)."""
    return zlib.decompress(blob, 16 + zlib.MAX_WBITS)
