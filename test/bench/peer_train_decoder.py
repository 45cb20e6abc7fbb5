#!/usr/bin/env python3
"""The peer of the decoder training benchmark: PyTorch + Hugging Face PEFT
doing what peft-engine train --task generation does, on the same rows,
options and thread count (test/bench/train_decoder.sh runs both).

    peer_train_decoder.py GGUF ROWS.tsv --threads 2 --batch-size 4 --steps 10 \
        [--warmup 1] [--max-length 512] [--lr 5e-3] [--json]

The model is the GGUF file as transformers loads it (LlamaForCausalLM, the
weights dequantized to float32, eager attention), every base weight frozen.
LoRA r 8, alpha 16, dropout 0 on q_proj and v_proj; AdamW (lr 5e-3,
weight decay 0.01), a linear schedule with 6% warm-up over warm-up plus
timed steps, clipping at 1.0.  ROWS.tsv has the header prompt<TAB>completion; each row is
tokenised as test/fixtures/ref_decoder_train.py and the engine do: the
GGUF's chat template over one user message with the generation prompt,
then the completion's tokens and <|im_end|>; labels only on the completion;
rows longer than --max-length (default 512, as peft-engine's for generation)
lose the start of their prompt.  Batches take B rows in file order
(wrapping around), right-padded to their longest row.  --warmup steps run
first and are not timed.

Prints training tokens/s (tokens: every non-pad token of the timed steps,
prompt and completion), rows/s and the process's peak resident memory
(getrusage; it includes the FP32 model, about 0.55 GB for SmolLM2-135M);
with --json, one JSON line with the same keys as peft-engine train --json
where they mean the same thing.  Run it as a file (with python -c from the
repository root, import peft would find our peft.so).
"""
import argparse
import json
import math
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
import peft  # noqa: E402

if not hasattr(peft, "LoraConfig"):
    sys.exit("peer_train_decoder: 'import peft' found %s, not Hugging Face PEFT; "
             "run from outside the repository" % getattr(peft, "__file__", "?"))
from peft import LoraConfig, get_peft_model  # noqa: E402


def read_rows(path):
    """(prompt, completion) pairs of a TSV whose header is prompt<TAB>completion."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:2] != ["prompt", "completion"]:
            sys.exit("peer_train_decoder: %s: the header must be prompt<TAB>completion" % path)
        rows = []
        for n, line in enumerate(f, 2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2:
                sys.exit("peer_train_decoder: %s:%d: no TAB" % (path, n))
            rows.append((fields[0], fields[1]))
    if not rows:
        sys.exit("peer_train_decoder: %s has no rows" % path)
    return rows


def tokenise(tok, rows, max_length):
    """Each row's ids and labels: chat-templated prompt (labels -100), completion + <|im_end|>."""
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    out = []
    for prompt, completion in rows:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        p = tok(text, add_special_tokens=False).input_ids
        c = tok(completion, add_special_tokens=False).input_ids + [im_end]
        c = c[:max_length]
        p = p[max(0, len(p) + len(c) - max_length):]  # cut from the prompt's start, as peft-engine
        out.append((p + c, [-100] * len(p) + c))
    return out


def batch(examples, pad_id):
    """Right-padded input_ids, attention_mask and labels of a list of (ids, labels)."""
    T = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(examples), T), dtype=torch.int64)
    labels = torch.full((len(examples), T), -100, dtype=torch.int64)
    for i, (x, y) in enumerate(examples):
        ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
        labels[i, :len(y)] = torch.tensor(y)
    return ids, mask, labels


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lr", type=float, default=5e-3)  # peft-engine's LoRA default
    ap.add_argument("--autocast-bf16", action="store_true",
                    help="run forward and loss under torch.autocast('cpu', torch.bfloat16)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    transformers.utils.logging.set_verbosity_error()
    folder, name = os.path.split(os.path.abspath(args.gguf))
    load_start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none",
                                             target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    load_seconds = time.perf_counter() - load_start
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    total = args.warmup + args.steps
    warm = math.ceil(0.06 * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))

    # Tokenise up front (peft-engine also tokenises before its timed loop).
    examples = tokenise(tok, read_rows(args.data), args.max_length)
    pad_id = tok.convert_tokens_to_ids("<|endoftext|>")

    def train_step(step):
        """One optimizer step; returns (loss, rows, non-pad tokens)."""
        chosen = [examples[(step * args.batch_size + i) % len(examples)] for i in range(args.batch_size)]
        ids, mask, labels = batch(chosen, pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast_bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss.item(), len(chosen), int(mask.sum())

    for step in range(args.warmup):
        train_step(step)
    rows = tokens = 0
    loss = float("nan")
    start = time.perf_counter()
    for step in range(args.warmup, total):
        loss, n, t = train_step(step)
        rows += n
        tokens += t
    seconds = time.perf_counter() - start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    result = {"steps": args.steps, "warmup_steps": args.warmup, "rows": rows, "tokens": tokens,
              "seconds": seconds, "rows_per_second": rows / seconds,
              "tokens_per_second": tokens / seconds, "final_loss": loss,
              "peak_rss_mb": peak_rss_mb, "load_seconds": load_seconds,
              "threads": args.threads, "batch_size": args.batch_size,
              "autocast_bf16": args.autocast_bf16,
              "trainable_parameters": sum(p.numel() for p in params),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "peft": peft.__version__}
    if args.json:
        print(json.dumps(result))
    else:
        print("trained %d steps (after %d untimed) in %.1f s: %.2f rows/s, %.0f tokens/s, "
              "final loss %.4f, peak RSS %.0f MB" % (args.steps, args.warmup, seconds,
                                                      result["rows_per_second"], result["tokens_per_second"],
                                                      loss, peak_rss_mb))


if __name__ == "__main__":
    main()
