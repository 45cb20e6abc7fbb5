#!/usr/bin/env python3
"""Generation speed of peft's decoder against llama.cpp (llama-cpp-python)
and transformers (FP32, the GGUF dequantized), side by side on the same
GGUF file with the same thread count (test/bench/generate.sh runs this).

    generate_bench.py ENGINE GGUF THREADS OUT.json

Measures, for each that is installed:
  - prompt tokens/s: one forward pass over a ~400-token prompt (best of 3);
  - generated tokens/s at batch 1: 128 new tokens, greedy, after the prompt
    (the prompt's time taken out), best of 3;
  - generated tokens/s at batch 16: 16 prompts decoded together (peft and
    transformers; llama-cpp-python's API decodes one sequence at a time, so
    its figure is 16 sequences one after another);
  - the memory bandwidth the decoding loop achieves (the bytes of the
    weights read per token times tokens/s) against the machine's, measured
    here by summing a 1 GiB array (numpy, one thread and all threads).
Prints a table and writes everything to OUT.json.
"""
import json
import os
import subprocess
import sys
import time

NEW_TOKENS = 128
REPEAT = 3
QUESTIONS = [
    "Write a long story about a dragon who learns to program in C.",
    "Explain in detail how a relational database executes a join.",
    "Describe the history of the Roman Empire.",
    "Write an essay about the importance of sleep.",
    "Explain how airplanes fly, step by step.",
    "Write a long letter to a friend about a trip to Japan.",
    "Describe how to bake bread from scratch, in detail.",
    "Explain the theory of evolution to a child.",
    "Write a detailed guide to learning the guitar.",
    "Describe the water cycle in detail.",
    "Write a story about a robot who wants to be a chef.",
    "Explain how the internet works.",
    "Describe a day in the life of a medieval farmer.",
    "Write a long poem about the ocean.",
    "Explain how vaccines work in detail.",
    "Describe the planets of the solar system one by one.",
]
LONG_PROMPT = " ".join(["PostgreSQL is a powerful, open source object-relational database system "
                        "with over 35 years of active development that has earned it a strong "
                        "reputation for reliability, feature robustness, and performance."] * 12)


def chat(q):
    """The prompt text as SmolLM2's chat template renders a user turn."""
    return ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n" % q)


def best(f, n=REPEAT):
    """The smallest time of n runs of f (which returns seconds, tokens)."""
    runs = [f() for _ in range(n)]
    return min(runs, key=lambda r: r[0] / max(r[1], 1))


def machine_bandwidth(threads):
    """GB/s of summing a 1 GiB float32 array (numpy): a read-bandwidth ceiling."""
    try:
        import numpy as np
    except ImportError:
        return None
    a = np.ones(1 << 28, dtype=np.float32)
    a.sum()
    t = time.perf_counter()
    for _ in range(3):
        a.sum()
    return 3 * a.nbytes / (time.perf_counter() - t) / 1e9


# ---- peft ------------------------------------------------------------------

def peft_run(engine, gguf, threads, args):
    """One peft-engine call; its JSON."""
    out = subprocess.run([engine] + args + ["--model", gguf, "--threads", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def bench_peft(engine, gguf, threads, tmp):
    res = {}
    r = best(lambda: (lambda d: (d["seconds"], d["prompt_tokens"]))(
        peft_run(engine, gguf, threads, ["logits", "--raw", "--prompt", LONG_PROMPT, "--top", "1"])))
    res["prompt_tokens_per_s"] = r[1] / r[0]
    res["prompt_tokens"] = r[1]

    def gen1():
        d = peft_run(engine, gguf, threads, ["generate", "--json", "--raw", "--prompt", chat(QUESTIONS[0]),
                                             "--max-new-tokens", str(NEW_TOKENS)])
        p = peft_run(engine, gguf, threads, ["logits", "--raw", "--prompt", chat(QUESTIONS[0]), "--top", "1"])
        return d["seconds"] - p["seconds"], d["new_tokens"]
    r = best(gen1)
    res["gen_tokens_per_s_b1"] = r[1] / r[0]
    res["gen_tokens_b1"] = r[1]
    # --prompts reads one prompt per line: the bare questions, rendered by --chat
    path = os.path.join(tmp, "prompts.txt")
    with open(path, "w") as f:
        f.write("\n".join(QUESTIONS) + "\n")

    def gen16():
        d = peft_run(engine, gguf, threads, ["generate", "--json", "--chat", "--prompts", path,
                                             "--max-new-tokens", str(NEW_TOKENS)])
        return d["seconds"], d["new_tokens"]
    r = best(gen16, 2)
    res["gen_tokens_per_s_b16"] = r[1] / r[0]
    res["gen_tokens_b16"] = r[1]
    return res


# ---- llama.cpp -------------------------------------------------------------

def bench_llama_cpp(gguf, threads):
    try:
        import llama_cpp
    except ImportError as e:
        return {"error": "llama-cpp-python is not installed: %s" % e}
    llm = llama_cpp.Llama(model_path=gguf, n_threads=threads, n_threads_batch=threads, n_ctx=2048,
                          n_batch=512, verbose=False)
    res = {"version": llama_cpp.__version__}
    long_ids = llm.tokenize(LONG_PROMPT.encode(), add_bos=False, special=True)

    def prompt():
        llm.reset()
        t = time.perf_counter()
        llm.eval(long_ids)
        return time.perf_counter() - t, len(long_ids)
    prompt()
    r = best(prompt)
    res["prompt_tokens_per_s"] = r[1] / r[0]
    res["prompt_tokens"] = r[1]

    def gen(q):
        ids = llm.tokenize(chat(q).encode(), add_bos=False, special=True)
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        n = 0
        for tok in llm.generate(ids, temp=0.0, top_k=1, reset=False):
            n += 1
            if tok == llm.token_eos() or n >= NEW_TOKENS:
                break
        return time.perf_counter() - t1, n
    r = best(lambda: gen(QUESTIONS[0]))
    res["gen_tokens_per_s_b1"] = r[1] / r[0]
    res["gen_tokens_b1"] = r[1]
    total_t, total_n = 0.0, 0
    for q in QUESTIONS:
        t, n = gen(q)
        total_t += t
        total_n += n
    res["gen_tokens_per_s_b16"] = total_n / total_t
    res["gen_tokens_b16"] = total_n
    res["b16_note"] = "one sequence at a time (llama-cpp-python's API has no batched generation)"
    return res


# ---- transformers ------------------------------------------------------------

def bench_transformers(gguf, threads):
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        return {"error": "transformers is not installed: %s" % e}
    torch.set_num_threads(threads)
    folder, name = os.path.split(gguf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32).eval()
    res = {"version": __import__("transformers").__version__, "torch": torch.__version__}
    long_ids = tok(LONG_PROMPT, return_tensors="pt", add_special_tokens=False).input_ids

    def prompt():
        t = time.perf_counter()
        with torch.no_grad():
            model(long_ids)
        return time.perf_counter() - t, long_ids.shape[1]
    prompt()
    r = best(prompt)
    res["prompt_tokens_per_s"] = r[1] / r[0]
    res["prompt_tokens"] = r[1]

    def gen(texts):
        tok.padding_side = "left"
        enc = tok([chat(q) for q in texts], return_tensors="pt", add_special_tokens=False, padding=True)
        with torch.no_grad():
            t = time.perf_counter()
            model(**enc)
            tp = time.perf_counter() - t
            t = time.perf_counter()
            out = model.generate(**enc, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                 do_sample=False, pad_token_id=2)
            tg = time.perf_counter() - t - tp
        return tg, (out.shape[1] - enc.input_ids.shape[1]) * len(texts)
    r = best(lambda: gen(QUESTIONS[:1]), 2)
    res["gen_tokens_per_s_b1"] = r[1] / r[0]
    res["gen_tokens_b1"] = r[1]
    r = gen(QUESTIONS)
    res["gen_tokens_per_s_b16"] = r[1] / r[0]
    res["gen_tokens_b16"] = r[1]
    return res


def weight_bytes_per_token(gguf):
    """Bytes of the weights one decoding step reads: every matrix once (the tied head included)."""
    try:
        import gguf as gg
    except ImportError:
        return os.path.getsize(gguf)
    r = gg.GGUFReader(gguf)
    total = sum(int(t.n_bytes) for t in r.tensors)
    return total


def main():
    engine, gguf, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    tmp = os.path.dirname(os.path.abspath(out))
    result = {"threads": threads, "gguf": gguf, "new_tokens": NEW_TOKENS,
              "machine": {"cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip().lstrip(":").strip(),
                          "cores": os.cpu_count()}}
    which = os.environ.get("PEFT_BENCH_PEERS", "llama.cpp transformers").split()
    result["peft"] = bench_peft(engine, gguf, threads, tmp)
    if "llama.cpp" in which:
        result["llama.cpp"] = bench_llama_cpp(gguf, threads)
    if "transformers" in which:
        result["transformers"] = bench_transformers(gguf, threads)
    result["weight_bytes_per_token"] = weight_bytes_per_token(gguf)
    result["machine"]["bandwidth_gb_s_numpy_sum"] = machine_bandwidth(threads)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    rows = [("prompt tokens/s (~%d-token prompt)" % result["peft"]["prompt_tokens"], "prompt_tokens_per_s"),
            ("generated tokens/s, batch 1", "gen_tokens_per_s_b1"),
            ("generated tokens/s, batch 16", "gen_tokens_per_s_b16")]
    print("threads %d, %s" % (threads, result["machine"]["cpu"]))
    print("%-36s %10s %10s %8s %12s %8s" % ("measure", "peft", "llama.cpp", "ratio", "transformers", "ratio"))
    for label, key in rows:
        p = result["peft"].get(key)
        l = result.get("llama.cpp", {}).get(key)
        t = result.get("transformers", {}).get(key)
        print("%-36s %10.1f %10s %8s %12s %8s" % (
            label, p, "%.1f" % l if l else "-", "%.2fx" % (p / l) if l else "-",
            "%.1f" % t if t else "-", "%.2fx" % (p / t) if t else "-"))
    bw = result["weight_bytes_per_token"] * result["peft"]["gen_tokens_per_s_b1"] / 1e9
    print("decoding reads %.1f MB of weights per token: %.1f GB/s at batch 1 (numpy sum of 1 GiB: %.1f GB/s)"
          % (result["weight_bytes_per_token"] / 1e6, bw, result["machine"]["bandwidth_gb_s_numpy_sum"] or 0))
    for peer in ("llama.cpp", "transformers"):
        if "error" in result.get(peer, {}):
            print("%s: %s" % (peer, result[peer]["error"]))


if __name__ == "__main__":
    main()
