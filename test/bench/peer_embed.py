#!/usr/bin/env python3
"""The peer of the embedding benchmark: sentence-transformers encoding the
same sentences with the same batch size and thread count.  Prints one JSON
line.

    peer_embed.py MODEL_DIR DATA.tsv --batch-size 32 --threads 2
    peer_embed.py MODEL_DIR DATA.tsv --device cuda --precision tf32 --batch-size 256

--device cpu (the default) runs exactly as before these options existed.
--device cuda (test/bench/run_gpu.sh): the model on the GPU, eager PyTorch
(no torch.compile), sentence-transformers' own attention choice as on the
CPU; three batches of warm-up, then the timed encode of every sentence,
bracketed by torch.cuda.synchronize(), ending with the embeddings copied to
the host as float32 (peft-engine embed also returns them to host memory).
--precision picks the matrix arithmetic:
  fp32  torch.backends.cuda.matmul.allow_tf32 = False (IEEE float32)
  tf32  torch.backends.cuda.matmul.allow_tf32 = True
  bf16  torch.autocast("cuda", dtype=torch.bfloat16) around encode, float32
        weights (allow_tf32 False for what autocast leaves in float32)
On the GPU machine the model folder is the one test/gpu/unpack_model.py
writes (the fp16-rounded weights in float32), the same folder peft-engine
loads.  On CUDA the JSON line also has device, precision and batch_size.
"""
import argparse
import contextlib
import json
import time

import torch
from sentence_transformers import SentenceTransformer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    args = ap.parse_args()
    if args.device == "cpu" and args.precision != "fp32":
        ap.error("--precision %s needs --device cuda" % args.precision)

    torch.set_num_threads(args.threads)
    texts = [line.rstrip("\n").split("\t", 1)[0] for line in open(args.data, encoding="utf-8")]
    if args.device == "cuda":
        print(json.dumps(encode_cuda(args, texts)))
        return
    model = SentenceTransformer(args.model, device="cpu")
    model.max_seq_length = 128
    model.encode(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up, as a server would be
    start = time.perf_counter()
    model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)
    elapsed = time.perf_counter() - start
    print(json.dumps({"rows": len(texts), "seconds": elapsed, "rows_per_second": len(texts) / elapsed}))


def encode_cuda(args, texts):
    """Time encode() on the GPU at the chosen precision; return the result."""
    if not torch.cuda.is_available():
        raise SystemExit("peer_embed: --device cuda but torch sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16)
                if args.precision == "bf16" else contextlib.nullcontext())
    model = SentenceTransformer(args.model, device="cuda")
    model.max_seq_length = 128

    def encode(part):
        with autocast:
            emb = model.encode(part, batch_size=args.batch_size, convert_to_tensor=True)
        return emb.float().cpu()

    encode(texts[: 3 * args.batch_size])  # warm-up: module load, cuBLAS handles, allocator
    torch.cuda.synchronize()
    start = time.perf_counter()
    emb = encode(texts)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert emb.shape[0] == len(texts) and bool(torch.isfinite(emb).all())
    return {"rows": len(texts), "seconds": elapsed, "rows_per_second": len(texts) / elapsed,
            "device": "cuda", "precision": args.precision, "batch_size": args.batch_size,
            "gpu": torch.cuda.get_device_name()}


if __name__ == "__main__":
    main()
