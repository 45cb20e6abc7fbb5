#!/usr/bin/env python3
"""Last-position logits of peft's decoder against transformers' over the
whole vocabulary, for the 16 prompts of test/fixtures/ref_decoder.py (the
issue's parity figure; test_decoder checks the top 32 of each).

    cd /tmp && python3 /path/to/ref_decoder.py GGUF REFDIR     # once: transformers' logits
    test/metrics/decoder_logits.py ENGINE GGUF REFDIR

Runs `peft-engine logits` on each prompt's text (raw: the fixture holds
the rendered chat text) and prints, per prompt and overall, the largest
absolute difference, whether the top-1 token agrees, and the token ids
agreement with transformers' tokenizer; then `peft-engine generate` (greedy,
64 new tokens, one prompt per call as a user would) and whether the text
equals transformers' greedy continuation, and where it first differs.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


def main():
    engine, gguf, ref = sys.argv[1], sys.argv[2], sys.argv[3]
    meta = json.load(open(os.path.join(ref, "prompts.json")))
    prompts = meta["prompts"]
    want = np.fromfile(os.path.join(ref, "logits.f32"), dtype="<f4").reshape(len(prompts), -1)
    worst, top1, ids_equal = 0.0, 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.f32")
        for i, p in enumerate(prompts):
            d = json.loads(subprocess.run([engine, "logits", "--model", gguf, "--raw", "--prompt", p["prompt"],
                                           "--out", out, "--top", "1"],
                                          check=True, capture_output=True, text=True).stdout)
            got = np.fromfile(out, dtype="<f4")
            diff = float(np.max(np.abs(got - want[i])))
            if not np.all(np.isfinite(got)):
                diff = float("inf")
            worst = max(worst, diff)
            same_top = int(np.argmax(got)) == int(np.argmax(want[i]))
            top1 += same_top
            ids_equal += d["ids"] == p["ids"]
            print("prompt %2d: %3d tokens, max |diff| %.3g over %d logits, top-1 %s" %
                  (i, len(p["ids"]), diff, got.size, "equal" if same_top else "DIFFERS"))
    print("all %d prompts: max |diff| %.3g; top-1 equal on %d; token ids equal to transformers' on %d" %
          (len(prompts), worst, top1, ids_equal))
    same = 0
    for i, p in enumerate(prompts):
        d = json.loads(subprocess.run([engine, "generate", "--model", gguf, "--raw", "--prompt", p["prompt"],
                                       "--max-new-tokens", str(meta["new_tokens"]), "--json"],
                                      check=True, capture_output=True, text=True).stdout)
        got, want = d["completions"][0]["text"], p["completion"]
        if got == want:
            same += 1
            continue
        k = 0
        while k < min(len(got), len(want)) and got[k] == want[k]:
            k += 1
        print("prompt %2d: greedy text differs from character %d: %r vs %r" % (i, k, got[k:k + 30], want[k:k + 30]))
    print("greedy %d new tokens, one prompt per call: text identical to transformers' on %d of %d" %
          (meta["new_tokens"], same, len(prompts)))
    return 0 if top1 == len(prompts) and np.isfinite(worst) else 1


if __name__ == "__main__":
    sys.exit(main())
