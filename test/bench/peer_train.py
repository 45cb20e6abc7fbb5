#!/usr/bin/env python3
"""The peer of the training benchmark: PyTorch + Hugging Face PEFT doing what
peft-engine train does, on the same data, options and thread count.

LoRA r=8, alpha 16, dropout 0.1 on query and value of the model; mean
pooling; a linear classification head trained in full; AdamW, linear
schedule with 6% warm-up, clipping at 1.0; random batches padded to their
longest row (no length grouping, as peft-engine --no-group); base-model
dropout as the model's config (train mode).  Prints one JSON line.

    peer_train.py MODEL_DIR DATA.tsv --steps N --batch-size 32 --threads 2
"""
import argparse
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
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    rows = [line.rstrip("\n").rsplit("\t", 1) for line in open(args.data, encoding="utf-8")]
    labels = sorted({label for _, label in rows})
    tok = AutoTokenizer.from_pretrained(args.model)
    base = AutoModel.from_pretrained(args.model, attn_implementation="eager")
    base = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1,
                                           target_modules=["query", "value"]))
    model = Classifier(base, len(labels))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warm = max(1, int(0.06 * args.steps + 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / warm if s < warm else max(0.0, (args.steps - s) / max(1, args.steps - warm)))

    # Tokenise up front (peft-engine also tokenises before its timed loop).
    enc = tok([t for t, _ in rows], truncation=True, max_length=args.max_length)
    order = list(range(len(rows)))
    random.Random(42).shuffle(order)
    target = torch.tensor([labels.index(label) for _, label in rows])

    seen = tokens = 0
    start = time.perf_counter()
    for step in range(args.steps):
        idx = [order[(step * args.batch_size + i) % len(order)] for i in range(args.batch_size)]
        batch = tok.pad({"input_ids": [enc["input_ids"][i] for i in idx]}, return_tensors="pt")
        logits = model(batch["input_ids"], batch["attention_mask"])
        loss = torch.nn.functional.cross_entropy(logits, target[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        seen += len(idx)
        tokens += int(batch["attention_mask"].sum())
    elapsed = time.perf_counter() - start
    print(json.dumps({"steps": args.steps, "rows": seen, "tokens": tokens, "seconds": elapsed,
                      "rows_per_second": seen / elapsed, "tokens_per_second": tokens / elapsed,
                      "final_loss": float(loss)}))


if __name__ == "__main__":
    main()
