"""Writes PyTorch zip checkpoints (the `torch.save` layout) without PyTorch, for tests.

`save_state_dict` lays out what `torch.save(state_dict, path)` writes since PyTorch 1.6: a stored
zip whose records sit under one archive name, `data.pkl` (protocol-2 pickle of an OrderedDict of
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())` calls with
storages as persistent ids `('storage', torch.<Type>Storage, key, 'cpu', numel)`), `data/<key>`
(raw little-endian storage bytes, 64-byte aligned), `byteorder` and `version`. The pickle opcodes
are emitted by hand (no memo), so no `torch` module is needed; `generate.py` in
Tests/Fixtures/torch-variants checks that real `torch.load(weights_only=True)` reads the output.

Options produce the variants the reader must handle or refuse: `zip64=True` writes ZIP64 extra
fields for every size and offset and a ZIP64 end record (as archives over 4 GiB need),
`compress=True` deflates the records, `byteorder` overrides the byteorder record, and
`pickle_bytes` replaces data.pkl altogether.
"""
import struct
import zlib

import numpy as np

try:
    import ml_dtypes
    _BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    _BF16 = None

STORAGE_TYPES = {
    np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage", np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage",
}
if _BF16 is not None:
    STORAGE_TYPES[_BF16] = "BFloat16Storage"


class View:
    """A tensor as a strided view of a flat storage array (element offset and strides)."""

    def __init__(self, storage, offset, shape, strides, storage_key=None):
        self.storage = np.ascontiguousarray(storage).reshape(-1)
        self.offset, self.shape, self.strides = offset, tuple(shape), tuple(strides)
        self.storage_key = storage_key


def _as_view(value):
    if isinstance(value, View):
        return value
    array = np.ascontiguousarray(value)
    strides = []
    step = 1
    for size in reversed(array.shape):
        strides.append(step)
        step *= size
    return View(array.reshape(-1), 0, array.shape, tuple(reversed(strides)))


class PickleWriter:
    """Protocol-2 opcodes, as pickle writes them."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")

    def op(self, code):
        self.out += code
        return self

    def string(self, text):
        raw = text.encode("utf-8")
        return self.op(b"X" + struct.pack("<I", len(raw)) + raw)

    def integer(self, value):
        if 0 <= value < 256:
            return self.op(b"K" + bytes([value]))
        if 0 <= value < 65536:
            return self.op(b"M" + struct.pack("<H", value))
        if -2**31 <= value < 2**31:
            return self.op(b"J" + struct.pack("<i", value))
        raw = value.to_bytes(8, "little", signed=True).rstrip(b"\x00") or b"\x00"
        if raw[-1] & 0x80 and value > 0:
            raw += b"\x00"
        return self.op(b"\x8a" + bytes([len(raw)]) + raw)

    def global_(self, module, name):
        return self.op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def int_tuple(self, values):
        self.op(b"(")
        for value in values:
            self.integer(value)
        return self.op(b"t")


def state_dict_pickle(tensors, storage_keys):
    """data.pkl for `tensors` (name → View); `storage_keys[name]` is its storage's key."""
    p = PickleWriter()
    p.global_("collections", "OrderedDict").op(b")R(")
    for name, view in tensors.items():
        p.string(name)
        p.global_("torch._utils", "_rebuild_tensor_v2").op(b"((")
        p.string("storage").global_("torch", STORAGE_TYPES[view.storage.dtype]).string(storage_keys[name]).string("cpu")
        p.integer(view.storage.size).op(b"tQ")
        p.integer(view.offset).int_tuple(view.shape).int_tuple(view.strides)
        p.op(b"\x89").global_("collections", "OrderedDict").op(b")R").op(b"tR")
    return bytes(p.op(b"u.").out)


def write_zip(path, records, zip64=False, compress=False, align=64):
    """A zip of `records` (name → bytes) in order, as PyTorch's writer lays it out: stored, data
    aligned to `align` bytes by padding the local header's extra field."""
    out = bytearray()
    central = bytearray()
    for name, data in records:
        raw_name = name.encode()
        payload = zlib.compress(data)[2:-4] if compress else data
        method = 8 if compress else 0
        crc = zlib.crc32(data) & 0xFFFFFFFF
        offset = len(out)
        header_size = 30 + len(raw_name)
        extra = b""
        if align and not compress:
            padding = (-(offset + header_size + 4)) % align
            extra = struct.pack("<HH", 0x4246, padding) + b"Z" * padding
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(payload), len(data), len(raw_name), len(extra))
        out += raw_name + extra + payload
        central_extra = b""
        size32, csize32, offset32 = len(data), len(payload), offset
        if zip64:
            central_extra = struct.pack("<HHQQQ", 0x0001, 24, len(data), len(payload), offset)
            size32 = csize32 = offset32 = 0xFFFFFFFF
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45 if zip64 else 20, 45 if zip64 else 20, 0, method, 0, 0,
                               crc, csize32, size32, len(raw_name), len(central_extra), 0, 0, 0, 0, offset32)
        central += raw_name + central_extra
    directory_offset = len(out)
    out += central
    count = len(records)
    if zip64:
        record_offset = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, len(central), directory_offset)
        out += struct.pack("<IIQI", 0x07064B50, 0, record_offset, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), directory_offset, 0)
    with open(path, "wb") as f:
        f.write(out)


def save_state_dict(path, tensors, archive="pytorch_model", zip64=False, compress=False, byteorder="little",
                    pickle_bytes=None):
    """Writes `tensors` (name → numpy array or View; bf16 as ml_dtypes.bfloat16) as torch.save would.
    Views sharing a `storage_key` share one storage record."""
    views = {name: _as_view(value) for name, value in tensors.items()}
    storage_keys, storages = {}, {}
    for name, view in views.items():
        key = view.storage_key if view.storage_key is not None else str(len(storages))
        storage_keys[name] = key
        storages.setdefault(key, view.storage)
    pickled = pickle_bytes if pickle_bytes is not None else state_dict_pickle(views, storage_keys)
    records = [(f"{archive}/data.pkl", pickled)]
    if byteorder is not None:
        records.append((f"{archive}/byteorder", byteorder.encode()))
    for key, storage in storages.items():
        records.append((f"{archive}/data/{key}", storage.astype(storage.dtype.newbyteorder("<"), copy=False).tobytes()))
    records.append((f"{archive}/version", b"3\n"))
    write_zip(path, records, zip64=zip64, compress=compress)
