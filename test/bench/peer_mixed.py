"""peer_mixed.py - the peer of test/bench/mixed_adapters.sh: Hugging Face PEFT
serving rows of many LoRA adapters at once (PeftModel's mixed-batch
inference, `adapter_names=` per row) against the same rows through one
adapter, on one thread as a peft connection computes.

    python peer_mixed.py MODEL_DIR ADAPTERS_DIR ROWS_TSV

ADAPTERS_DIR holds NAME.safetensors and NAME.json (peft_export and
peft_export_config of each adapter); ROWS_TSV lines are "adapter<TAB>text".
Prints one JSON line: rows/s through the first row's adapter alone and with
every row's own adapter, batches of 32 in input order, mean pooling (the
heads are left out: a [32, 384] x [384, K] product).
"""
import json
import os
import sys
import time

import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

BATCH = 32
REPEAT = int(os.environ.get("PEFT_BENCH_REPEAT", "3"))


def load_adapters(model, adapters_dir, names):
    """Add every adapter (its LoRA tensors; the head dropped) to a PeftModel over model."""
    peft_model = None
    for name in names:
        config = json.load(open(os.path.join(adapters_dir, name + ".json")))
        lora = LoraConfig(r=config["r"], lora_alpha=config["lora_alpha"],
                          target_modules=config["target_modules"], lora_dropout=0.0)
        if peft_model is None:
            peft_model = get_peft_model(model, lora, adapter_name=name)
        else:
            peft_model.add_adapter(name, lora)
        weights = load_file(os.path.join(adapters_dir, name + ".safetensors"))
        weights = {k: v for k, v in weights.items() if "lora_" in k}
        result = set_peft_model_state_dict(peft_model, weights, adapter_name=name)
        assert not [k for k in result.unexpected_keys if "lora_" in k], result.unexpected_keys
    peft_model.eval()
    return peft_model


def run(peft_model, tokenizer, texts, names):
    """Seconds for one pass over the rows; names None: the active adapter for all."""
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(texts), BATCH):
            enc = tokenizer(texts[first:first + BATCH], padding=True, truncation=True,
                            max_length=128, return_tensors="pt")
            kwargs = {} if names is None else {"adapter_names": names[first:first + BATCH]}
            hidden = peft_model(**enc, **kwargs).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            (hidden * mask).sum(1) / mask.sum(1)
    return time.perf_counter() - start


def main():
    model_dir, adapters_dir, rows_tsv = sys.argv[1:4]
    torch.set_num_threads(1)
    rows = [line.rstrip("\n").split("\t", 1) for line in open(rows_tsv) if line.strip()]
    names = [r[0] for r in rows]
    texts = [r[1] for r in rows]
    unique = list(dict.fromkeys(names))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    peft_model = load_adapters(AutoModel.from_pretrained(model_dir), adapters_dir, unique)
    peft_model.set_adapter(names[0])
    run(peft_model, tokenizer, texts, None)  # warm-up
    one = min(run(peft_model, tokenizer, texts, None) for _ in range(REPEAT))
    run(peft_model, tokenizer, texts, names)
    mixed = min(run(peft_model, tokenizer, texts, names) for _ in range(REPEAT))
    print(json.dumps({"rows": len(texts), "adapters": len(unique),
                      "one_rows_per_s": len(texts) / one, "mixed_rows_per_s": len(texts) / mixed}))


if __name__ == "__main__":
    main()
