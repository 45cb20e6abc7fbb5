#!/usr/bin/env python3
"""Pack the base model small enough to carry to a GPU machine.

The GPU machine has no network, so the model travels with the build, and
what travels is limited to 64 MiB in all.  The float32 all-MiniLM-L6-v2
(model.safetensors, about 90 MB) does not fit; in float16 (about 45 MB) it
does.  This script writes OUT_DIR (default build/gpu-model) with

  model.safetensors   the same tensors, names, order and metadata, every
                      F32 tensor stored as F16 (round to nearest even);
                      other dtypes (the I64 position_ids) as they are
  pack.json           the original safetensors header, byte for byte, and
                      its size and sha256, for unpack_model.py
  every other file    of the model folder (config.json, vocab.txt,
                      tokenizer*.json, special_tokens_map.json, modules.json,
                      sentence_bert_config.json, 1_Pooling/config.json, ...)

test/gpu/unpack_model.py turns it back into a float32 folder whose
model.safetensors has the original header (so the same names, order,
offsets and metadata) and holds the fp16-rounded weights widened to float32.
Both peft-engine and the peers (PyTorch + PEFT, sentence-transformers) then
load that same unpacked folder on the GPU machine, so they compare on
identical weights; the results differ from the original float32 model's by
the fp16 rounding only (at most 2^-11 relative per weight; measured on 500
benchmark sentences with sentence-transformers on a CPU: every embedding's
cosine to the original's above 0.999999, relative L2 difference 1e-3).

    pack_model.py [MODEL_DIR [OUT_DIR]]

MODEL_DIR defaults to what scripts/fetch_model prints.  Needs numpy, or
falls back to the standard library (slower).  test/gpu/check.sh --bundle
runs it.
"""
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

WEIGHTS = "model.safetensors"
# Other weight formats a Hugging Face folder may hold: not carried.
SKIP_NAMES = {"pytorch_model.bin", "tf_model.h5", "rust_model.ot", "flax_model.msgpack",
              ".complete", "pack.json"}
SKIP_DIRS = {"onnx", "openvino", ".git", ".cache"}
MAX_SMALL = 4 << 20  # a "small file" is under 4 MiB
F16_MAX = 65504.0


def read_header(path):
    """(header_bytes, header_dict, data_start) of a safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = f.read(n)
    return raw, json.loads(raw), 8 + n


def tensors_in_file_order(header):
    """[(name, info)] sorted by data offset, checked to tile the data."""
    items = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                   key=lambda kv: kv[1]["data_offsets"][0])
    pos = 0
    for name, info in items:
        begin, end = info["data_offsets"]
        if begin != pos or end < begin:
            raise SystemExit("%s: data offsets do not tile the file at %s" % (WEIGHTS, name))
        pos = end
    return items, pos


def to_f16(buf):
    """Little-endian float32 bytes -> (float16 bytes, max |x|, zeros made)."""
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        a = np.frombuffer(buf, dtype="<f4")
        if not np.all(np.isfinite(a)):
            raise SystemExit("non-finite weight in the float32 model")
        peak = float(np.abs(a).max()) if a.size else 0.0
        if peak > F16_MAX:
            raise SystemExit("weight %g is out of float16 range" % peak)
        h = a.astype("<f2")
        zeros = int(np.count_nonzero((h == 0) & (a != 0)))
        return h.tobytes(), peak, zeros
    n = len(buf) // 4
    vals = struct.unpack("<%df" % n, buf)
    peak = max((abs(v) for v in vals), default=0.0)
    if peak > F16_MAX or peak != peak:
        raise SystemExit("weight %g is out of float16 range" % peak)
    out = struct.pack("<%de" % n, *vals)
    back = struct.unpack("<%de" % n, out)
    zeros = sum(1 for v, b in zip(vals, back) if b == 0 and v != 0)
    return out, peak, zeros


def default_model_dir(repo):
    out = subprocess.run([os.path.join(repo, "scripts", "fetch_model")], check=True,
                         stdout=subprocess.PIPE, text=True).stdout.strip()
    return out.splitlines()[-1]


def main():
    repo = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    model = sys.argv[1] if len(sys.argv) > 1 else default_model_dir(repo)
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(repo, "build", "gpu-model")
    src = os.path.join(model, WEIGHTS)
    raw, header, data_start = read_header(src)
    items, data_len = tensors_in_file_order(header)
    size = os.path.getsize(src)
    if data_start + data_len != size:
        raise SystemExit("%s: %d bytes of data expected, file has %d" % (src, data_start + data_len, size - data_start))

    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)

    # New header: the same keys in the same order, F32 -> F16, new offsets.
    new_offsets = {}
    pos = 0
    for name, info in items:
        begin, end = info["data_offsets"]
        nbytes = (end - begin) // 2 if info["dtype"] == "F32" else end - begin
        new_offsets[name] = (pos, pos + nbytes)
        pos += nbytes
    packed = {}
    for key, info in header.items():
        if key == "__metadata__":
            packed[key] = info
            continue
        info = dict(info)
        if info["dtype"] == "F32":
            info["dtype"] = "F16"
        info["data_offsets"] = list(new_offsets[key])
        packed[key] = info
    head = json.dumps(packed, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)

    sha = hashlib.sha256()
    peak = 0.0
    zeros = converted = 0
    with open(src, "rb") as f, open(os.path.join(tmp, WEIGHTS), "wb") as g:
        sha.update(f.read(data_start))
        g.write(struct.pack("<Q", len(head)))
        g.write(head)
        for name, info in items:
            begin, end = info["data_offsets"]
            f.seek(data_start + begin)
            buf = f.read(end - begin)
            sha.update(buf)
            if info["dtype"] == "F32":
                buf, p, z = to_f16(buf)
                peak = max(peak, p)
                zeros += z
                converted += 1
            g.write(buf)

    copied = []
    for root, dirs, files in os.walk(model):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for fname in sorted(files):
            rel = os.path.relpath(os.path.join(root, fname), model)
            if rel == WEIGHTS or fname in SKIP_NAMES or fname.endswith((".safetensors", ".bin", ".onnx")):
                continue
            path = os.path.join(model, rel)
            if os.path.getsize(path) > MAX_SMALL:
                print("pack_model: not carried (over 4 MiB): %s" % rel, file=sys.stderr)
                continue
            os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
            shutil.copyfile(path, os.path.join(tmp, rel))
            copied.append(rel)

    with open(os.path.join(tmp, "pack.json"), "w", encoding="utf-8") as f:
        json.dump({"format": "peft gpu-model 1",
                   "source": os.path.abspath(model),
                   "source_size": size,
                   "source_sha256": sha.hexdigest(),
                   "source_header": raw.decode("utf-8"),
                   "converted": "F32 -> F16, round to nearest even",
                   "files": copied}, f, indent=1)
        f.write("\n")
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    total = sum(os.path.getsize(os.path.join(r, x)) for r, _, fs in os.walk(out) for x in fs)
    print("pack_model: %s -> %s: %d tensors, %d as float16 (largest |w| %.4g, %d underflowed to 0), "
          "%d other files, %.1f MiB" % (model, out, len(items), converted, peak, zeros, len(copied),
                                        total / 2**20))


if __name__ == "__main__":
    main()
