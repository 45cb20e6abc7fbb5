#!/usr/bin/env python3
"""The peer of the embedding benchmark: sentence-transformers encoding the
same sentences with the same batch size and thread count.  Prints one JSON
line.

    peer_embed.py MODEL_DIR DATA.tsv --batch-size 32 --threads 2
"""
import argparse
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
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    texts = [line.rstrip("\n").split("\t", 1)[0] for line in open(args.data, encoding="utf-8")]
    model = SentenceTransformer(args.model, device="cpu")
    model.max_seq_length = 128
    model.encode(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up, as a server would be
    start = time.perf_counter()
    model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)
    elapsed = time.perf_counter() - start
    print(json.dumps({"rows": len(texts), "seconds": elapsed, "rows_per_second": len(texts) / elapsed}))


if __name__ == "__main__":
    main()
