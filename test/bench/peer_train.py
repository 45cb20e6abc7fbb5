#!/usr/bin/env python3
"""The peer of the training benchmark: PyTorch + Hugging Face PEFT doing what
peft-engine train does, on the same data, options and thread count.

LoRA r=8, alpha 16, dropout 0.1 on query and value of the model; mean
pooling; a linear classification head trained in full; AdamW, linear
schedule with 6% warm-up, clipping at 1.0; random batches padded to their
longest row (no length grouping, as peft-engine --no-group); base-model
dropout as the model's config (train mode).  Prints one JSON line.

    peer_train.py MODEL_DIR DATA.tsv --steps N --batch-size 32 --threads 2
    peer_train.py MODEL_DIR DATA.tsv --device cuda --precision tf32 --steps 200

--device cpu (the default) runs exactly as before these options existed.
--device cuda (test/bench/run_gpu.sh): the model and each batch go to the
GPU; eager PyTorch (no torch.compile), the model's eager attention as on the
CPU; --warmup steps (default 10) train first and are left out of the timing,
which is bracketed by torch.cuda.synchronize(); the learning-rate schedule
spans warm-up plus timed steps.  --precision picks the matrix arithmetic:
  fp32  torch.backends.cuda.matmul.allow_tf32 = False (IEEE float32)
  tf32  torch.backends.cuda.matmul.allow_tf32 = True
  bf16  torch.autocast("cuda", dtype=torch.bfloat16) around the forward pass
        and the loss, float32 master weights and optimizer (allow_tf32 False
        for what autocast leaves in float32)
On the GPU machine the model folder is the one test/gpu/unpack_model.py
writes (the fp16-rounded weights in float32), the same folder peft-engine
loads.  On CUDA the JSON line also has device, precision and warmup_steps.
"""
import argparse
import contextlib
import json
import random
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModel, AutoTokenizer


class Classifier(torch.nn.Module):
    """BERT + LoRA, mean pooling, linear head."""

    def __init__(self, base, classes):
        super().__init__()
        self.base = base
        self.head = torch.nn.Linear(base.config.hidden_size, classes)

    def forward(self, ids, mask):
        hidden = self.base(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.head(pooled)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps first (default 0 on cpu, 10 on cuda)")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    if not cuda and args.precision != "fp32":
        ap.error("--precision %s needs --device cuda" % args.precision)
    if cuda and not torch.cuda.is_available():
        raise SystemExit("peer_train: --device cuda but torch sees no CUDA device")
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 0)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16)
                if cuda and args.precision == "bf16" else contextlib.nullcontext())

    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    rows = [line.rstrip("\n").rsplit("\t", 1) for line in open(args.data, encoding="utf-8")]
    labels = sorted({label for _, label in rows})
    tok = AutoTokenizer.from_pretrained(args.model)
    base = AutoModel.from_pretrained(args.model, attn_implementation="eager")
    base = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1,
                                           target_modules=["query", "value"]))
    model = Classifier(base, len(labels))
    if cuda:
        model.to(args.device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    total = warmup + args.steps
    warm = max(1, int(0.06 * total + 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))

    # Tokenise up front (peft-engine also tokenises before its timed loop).
    enc = tok([t for t, _ in rows], truncation=True, max_length=args.max_length)
    order = list(range(len(rows)))
    random.Random(42).shuffle(order)
    target = torch.tensor([labels.index(label) for _, label in rows])
    if cuda:
        target = target.to(args.device)

    def train_step(step):
        """One optimizer step; returns (loss tensor, rows, real tokens)."""
        idx = [order[(step * args.batch_size + i) % len(order)] for i in range(args.batch_size)]
        batch = tok.pad({"input_ids": [enc["input_ids"][i] for i in idx]}, return_tensors="pt")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if cuda:
            ids, mask = ids.to(args.device), mask.to(args.device)
        with autocast:
            logits = model(ids, mask)
            loss = torch.nn.functional.cross_entropy(logits, target[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss, len(idx), int(batch["attention_mask"].sum())

    for step in range(warmup):
        train_step(step)
    if cuda:
        torch.cuda.synchronize()
    seen = tokens = 0
    start = time.perf_counter()
    for step in range(warmup, warmup + args.steps):
        loss, n, t = train_step(step)
        seen += n
        tokens += t
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    result = {"steps": args.steps, "rows": seen, "tokens": tokens, "seconds": elapsed,
              "rows_per_second": seen / elapsed, "tokens_per_second": tokens / elapsed,
              "final_loss": float(loss)}
    if cuda:
        result.update(device=args.device, precision=args.precision, warmup_steps=warmup,
                      gpu=torch.cuda.get_device_name())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
