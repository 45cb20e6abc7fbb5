#!/usr/bin/env python3
"""Unpack a model packed by test/gpu/pack_model.py into a float32 folder.

pack_model.py stores the F32 tensors of model.safetensors as F16 so the
model fits in what is carried to a GPU machine.  This writes OUT_DIR with a
model.safetensors that has the original file's header byte for byte (the
same tensor names, order, offsets and __metadata__), the fp16-rounded
weights widened back to float32 (exactly: every float16 is a float32), the
other tensors (the I64 position_ids) unchanged, and all the other files of
the packed folder (config.json, tokenizer files, 1_Pooling/, ...).

On the GPU machine peft-engine and the peers (PyTorch + PEFT,
sentence-transformers) all load this one unpacked folder, so the benchmark
compares them on identical weights.  Those weights are the original ones
rounded to float16, so figures (losses, embeddings) differ slightly from
what the original float32 model gives; speed does not.

    unpack_model.py PACKED_DIR OUT_DIR

Plain python3: the standard library and numpy (falls back to the standard
library alone, slower).
"""
import json
import os
import shutil
import struct
import sys

WEIGHTS = "model.safetensors"


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), 8 + n


def to_f32(buf):
    """Little-endian float16 bytes -> float32 bytes (exact)."""
    try:
        import numpy as np
    except ImportError:
        n = len(buf) // 2
        return struct.pack("<%df" % n, *struct.unpack("<%de" % n, buf))
    return np.frombuffer(buf, dtype="<f2").astype("<f4").tobytes()


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: unpack_model.py PACKED_DIR OUT_DIR")
    packed_dir, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(packed_dir, "pack.json"), encoding="utf-8") as f:
        pack = json.load(f)
    raw = pack["source_header"].encode("utf-8")
    source = json.loads(raw)
    packed, packed_start = read_header(os.path.join(packed_dir, WEIGHTS))
    names = [k for k in source if k != "__metadata__"]
    if [k for k in packed if k != "__metadata__"] != names:
        raise SystemExit("unpack_model: the packed tensors are not the original's")

    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(packed_dir, WEIGHTS), "rb") as f, \
            open(os.path.join(tmp, WEIGHTS), "wb") as g:
        g.write(struct.pack("<Q", len(raw)))
        g.write(raw)
        start = g.tell()
        for name in sorted(names, key=lambda k: source[k]["data_offsets"][0]):
            s, p = source[name], packed[name]
            if s["shape"] != p["shape"]:
                raise SystemExit("unpack_model: %s changed shape" % name)
            f.seek(packed_start + p["data_offsets"][0])
            buf = f.read(p["data_offsets"][1] - p["data_offsets"][0])
            if s["dtype"] == "F32" and p["dtype"] == "F16":
                buf = to_f32(buf)
            elif s["dtype"] != p["dtype"]:
                raise SystemExit("unpack_model: %s is %s, was %s" % (name, p["dtype"], s["dtype"]))
            begin, end = s["data_offsets"]
            if g.tell() - start != begin or len(buf) != end - begin:
                raise SystemExit("unpack_model: %s does not land at its original offsets" % name)
            g.write(buf)
        size = g.tell()
    if size != pack["source_size"]:
        raise SystemExit("unpack_model: wrote %d bytes, the original had %d" % (size, pack["source_size"]))

    for root, dirs, files in os.walk(packed_dir):
        dirs.sort()
        for fname in sorted(files):
            rel = os.path.relpath(os.path.join(root, fname), packed_dir)
            if rel in (WEIGHTS, "pack.json"):
                continue
            os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
            shutil.copyfile(os.path.join(root, fname), os.path.join(tmp, rel))
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    print("unpack_model: %s -> %s: %d tensors, %.1f MiB" % (packed_dir, out, len(names), size / 2**20))


if __name__ == "__main__":
    main()
