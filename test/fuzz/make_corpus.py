#!/usr/bin/env python3
"""Write the seed corpora of the libFuzzer harnesses (test/fuzz/corpus/).

Small valid and near-valid inputs for each harness, in its input format
(see the comment at the top of each test/fuzz/fuzz_*.c).  Real files are
used where they exist: the configs, tokenizer and safetensors header of
all-MiniLM-L6-v2 ($PEFT_MODEL_DIR or /var/cache/peft/all-MiniLM-L6-v2; the
tiny model's files when it is absent), the tiny model of
test/fixtures/make_tiny_model.py, and the PEFT adapter in
test/fixtures/reference/.  The adapter seeds of every method are written by
the built harness itself (build/fuzz/fuzz_adapter, FUZZ_ADAPTER_SEEDS), so
run test/fuzz/build.sh first.  The GGUF seeds are written by a small
writer here: every value and tensor type, alignments, one rule broken per
near-valid seed, the chat templates of test/fixtures/reference/chat/ as
tokenizer.chat_template, and the real SmolLM2-135M-Instruct GGUF's
metadata with its tensors shrunk ($PEFT_DECODER_GGUF or the fetch_model
cache; skipped when absent); test/fixtures/reference/small.gguf joins them.
Deterministic; standard library only.

Usage: python3 test/fuzz/make_corpus.py [OUTDIR] [--only HARNESS[,HARNESS...]]
       (default: test/fuzz/corpus, every harness)
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REFERENCE = os.path.join(ROOT, "test", "fixtures", "reference")

DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4,
              "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
DTYPE_PACK = {"F64": "d", "F32": "f", "F16": "e", "I64": "q", "I32": "i",
              "I16": "h", "I8": "b", "U8": "B", "BOOL": "?"}


def real_model_dir():
    """The real all-MiniLM-L6-v2 folder, or None."""
    d = os.environ.get("PEFT_MODEL_DIR") or "/var/cache/peft/all-MiniLM-L6-v2"
    return d if os.path.isfile(os.path.join(d, "config.json")) else None


def read(path):
    with open(path, "rb") as f:
        return f.read()


def st_bytes(tensors, metadata=None, pad=True):
    """A safetensors image of [(name, dtype, shape, raw bytes)], in order."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors)


def raw_header(text):
    """A safetensors image whose header is the given text, no data."""
    if isinstance(text, str):
        text = text.encode("utf-8")
    return struct.pack("<Q", len(text)) + text


def pack(dtype, values):
    if dtype == "BF16":
        return b"".join(struct.pack("<f", v)[2:] for v in values)
    return struct.pack("<%d%s" % (len(values), DTYPE_PACK[dtype]), *values)


def f32(count, scale=0.01):
    return pack("F32", [((i * 7919) % 201 - 100) * scale / 100 for i in range(count)])


class Corpus:
    """Writes the seeds of one harness, named by what they are."""

    def __init__(self, outdir, harness):
        self.dir = os.path.join(outdir, harness)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)

    def add(self, name, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        with open(os.path.join(self.dir, name), "wb") as f:
            f.write(data)


# ---- safetensors ------------------------------------------------------------

def safetensors_seeds(c, tiny, real):
    inf, nan = float("inf"), float("nan")
    special = [0.0, -0.0, 1.0, -2.5, inf, -inf, nan, 1e-45, 6e-8, 65504.0]
    c.add("valid_f32_metadata", st_bytes(
        [("a.weight", "F32", [2, 3], f32(6)), ("a.bias", "F32", [3], f32(3))],
        {"format": "pt"}))
    c.add("valid_all_dtypes", st_bytes(
        [("f64", "F64", [10], pack("F64", special)),
         ("f32", "F32", [2, 5], pack("F32", special)),
         ("f16", "F16", [10], pack("F16", special)),
         ("bf16", "BF16", [5, 2], pack("BF16", special)),
         ("i64", "I64", [2], pack("I64", [-1, 2 ** 62])),
         ("i32", "I32", [1, 2], pack("I32", [-5, 7])),
         ("i16", "I16", [2], pack("I16", [1, -1])),
         ("i8", "I8", [3], pack("I8", [1, -2, 3])),
         ("u8", "U8", [3], pack("U8", [0, 128, 255])),
         ("bool", "BOOL", [2], pack("BOOL", [True, False]))],
        {"format": "pt", "note": "every dtype"}))
    c.add("valid_scalar_and_empty", st_bytes(
        [("scalar", "F32", [], f32(1)), ("empty", "F16", [0, 4], b""),
         ("zero_dim_huge", "F32", [0, 9007199254740992], b""),
         ("eight_dims", "F32", [1, 1, 1, 1, 1, 1, 1, 2], f32(2))]))
    c.add("valid_unicode_names", st_bytes(
        [("caf\u00e9.\u4e2d\u6587", "F32", [1], f32(1)),
         ("quote\"back\\slash\ttab", "F32", [1], f32(1)),
         ("\U0001F600", "BF16", [2], pack("BF16", [1.0, -1.0]))],
        {"k\u00e9y": "v\u00e4lue"}))
    c.add("valid_unpadded_header", st_bytes(
        [("x", "F32", [3], f32(3))], pad=False))
    c.add("valid_empty_header", raw_header("{}"))
    c.add("valid_metadata_only", raw_header('{"__metadata__":{"format":"pt"}}'))
    # near-valid: each one breaks exactly one rule
    c.add("bad_overlap", raw_header(
        '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}') + bytes(12))
    c.add("bad_duplicate_name", raw_header(
        '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}') + bytes(8))
    c.add("bad_span_mismatch", raw_header(
        '{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,4]}}') + bytes(4))
    c.add("bad_offsets_past_end", raw_header(
        '{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}') + bytes(8))
    c.add("bad_unsupported_dtype", raw_header(
        '{"a":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}') + bytes(4))
    c.add("bad_nul_escape", raw_header(
        '{"a\\u0000b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}') + bytes(4))
    c.add("bad_shape_overflow", raw_header(
        '{"a":{"dtype":"F64","shape":[4294967296,4294967296,2],"data_offsets":[0,8]}}')
        + bytes(8))
    c.add("bad_header_length", struct.pack("<Q", 2 ** 40) + b"{}")
    c.add("bad_metadata_value", raw_header('{"__metadata__":{"format":1}}'))
    # real headers, data cut short: near-valid
    head_len = struct.unpack("<Q", read(os.path.join(tiny, "model.safetensors"))[:8])[0]
    tiny_st = read(os.path.join(tiny, "model.safetensors"))
    c.add("real_tiny_model_truncated", tiny_st[:8 + head_len + 1024])
    adapter = read(os.path.join(REFERENCE, "peft_adapter_model.safetensors"))
    head_len = struct.unpack("<Q", adapter[:8])[0]
    c.add("real_peft_adapter_truncated", adapter[:8 + head_len + 512])
    if real:
        model = os.path.join(real, "model.safetensors")
        with open(model, "rb") as f:
            head = f.read(8)
            head += f.read(struct.unpack("<Q", head)[0] + 256)
        c.add("real_minilm_header_truncated", head)
    # a real header made valid: the tiny model's layer-0 attention tensors
    names = json.loads(tiny_st[8:8 + struct.unpack("<Q", tiny_st[:8])[0]])
    keep = sorted(n for n in names if n.startswith("encoder.layer.0.attention.output"))
    data_start = 8 + struct.unpack("<Q", tiny_st[:8])[0]
    tensors = []
    for n in keep:
        b, e = names[n]["data_offsets"]
        tensors.append((n, names[n]["dtype"], names[n]["shape"],
                        tiny_st[data_start + b:data_start + e]))
    c.add("real_tiny_layer0_subset", st_bytes(tensors, {"format": "pt"}))


# ---- config -----------------------------------------------------------------

CONFIG_FILES = ["config.json", "tokenizer_config.json", "modules.json",
                "1_Pooling/config.json", "sentence_bert_config.json"]


def config_seeds(c, tiny, real):
    for label, folder in (("tiny", tiny), ("minilm", real)):
        if folder is None:
            continue
        texts = []
        for i, name in enumerate(CONFIG_FILES):
            text = read(os.path.join(folder, name))
            texts.append(text)
            c.add("%s_%d_%s" % (label, i, name.replace("/", "_")), bytes([i]) + text)
        c.add("%s_5_folder" % label, bytes([5]) + b"\0".join(texts))
    base = json.loads(read(os.path.join(real or tiny, "config.json")))
    arch_only = dict(base)
    del arch_only["model_type"]
    c.add("near_architectures_only", bytes([0]) + json.dumps(arch_only).encode())
    c.add("near_roberta", bytes([0]) + json.dumps(dict(base, model_type="roberta")).encode())
    c.add("near_relu", bytes([0]) + json.dumps(dict(base, hidden_act="relu")).encode())
    c.add("near_heads_not_divisor", bytes([0]) + json.dumps(dict(base, num_attention_heads=5)).encode())
    c.add("near_duplicate_key", bytes([0]) + b'{"vocab_size": 10, "vocab_size": 20}')
    c.add("near_float_size", bytes([0]) + json.dumps(dict(base, hidden_size=384.5)).encode())
    c.add("near_cls_pooling", bytes([3]) + json.dumps(
        {"word_embedding_dimension": 384, "pooling_mode_cls_token": True,
         "pooling_mode_mean_tokens": False}).encode())
    c.add("near_max_pooling", bytes([3]) + json.dumps(
        {"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": True}).encode())
    c.add("near_cased_tokenizer", bytes([1]) + json.dumps(
        {"do_lower_case": False, "strip_accents": True, "tokenize_chinese_chars": False}).encode())
    c.add("near_sbert_long", bytes([4]) + b'{"max_seq_length": 100000, "do_lower_case": true}')
    c.add("near_modules_no_type", bytes([2]) + b'[{"idx": 0}, 3]')


# ---- tokenizer --------------------------------------------------------------

TEXTS = [
    b"This movie was great, I loved it!",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m \u0130stanbul".encode(),
    "\u4e2d\u6587\u5b57 mixed\u4e2dtext \u3042\u3044 \ud55c\uad6d\uc5b4".encode(),
    b"[CLS] hello [MASK] world [SEP][PAD][UNK]",
    b"bad \xff\xfe utf8 \xc0\xaf overlong \xed\xa0\x80 surrogate \xe2\x82 cut \xf4\x90\x80\x80",
    b"x" * 120 + b" unaffable goodness",
    "a\u0301\u0323 e\u0308\u0304 \u1e0b\u0323 combining \u0345\u0300".encode(),
    "tabs\tand\nnewlines\r\n\x00nul \x07bell \u200bzwsp \ufeffbom \u00a0nbsp".encode(),
    "emoji \U0001F600\U0001F44D\U0001F3FD and \u2167 \u2460 \uff21\uff22".encode(),
    b"",
]


def tokenizer_json(tokens, ids, **model_extra):
    """A tokenizer.json in Hugging Face's layout for the given vocabulary."""
    added = [{"id": ids[t], "special": True, "content": t, "single_word": False,
              "lstrip": False, "rstrip": False, "normalized": False}
             for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in ids]
    model = {"type": "WordPiece", "unk_token": "[UNK]",
             "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
             "vocab": {t: ids[t] for t in tokens}}
    model.update(model_extra)
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": True,
                       "handle_chinese_chars": True, "strip_accents": None,
                       "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": model}, ensure_ascii=False).encode("utf-8")


def tok_input(flags, max_length, vocab, text):
    return bytes([flags, max_length]) + struct.pack("<H", len(vocab)) + vocab + text


def tokenizer_seeds(c, tiny, real):
    vocab = read(os.path.join(tiny, "vocab.txt"))
    tokens = vocab.decode().splitlines()
    ids = {t: i for i, t in enumerate(tokens)}
    # texts against the fixed vocabulary, under varied options and lengths
    for i, text in enumerate(TEXTS):
        flags = [0x0E, 0x02, 0x00, 0x0A, 0x06][i % 5]
        c.add("text_%02d" % i, tok_input(flags, [128, 16, 2, 255, 1][i % 5], b"", text))
    # vocabularies: the tiny vocab.txt, CRLF + BOM, and tokenizer.json forms
    c.add("vocab_tiny_txt", tok_input(0x0E, 64, vocab, TEXTS[0]))
    c.add("vocab_tiny_txt_noopts", tok_input(0x10, 64, vocab, TEXTS[1]))
    c.add("vocab_crlf_bom", tok_input(0x0E, 32, b"\xef\xbb\xbf" + vocab.replace(b"\n", b"\r\n"), TEXTS[6]))
    c.add("vocab_tiny_json", tok_input(0x0F, 64, tokenizer_json(tokens, ids), TEXTS[3]))
    c.add("vocab_tiny_json_normalizer", tok_input(0x11, 64, tokenizer_json(tokens, ids), TEXTS[2]))
    c.add("vocab_json_prefix", tok_input(0x0F, 64, tokenizer_json(
        tokens, ids, continuing_subword_prefix="@@", max_input_chars_per_word=8), TEXTS[5]))
    c.add("near_vocab_missing_cls", tok_input(0x0E, 64, b"[PAD]\n[UNK]\n[SEP]\nhello\n", b"hello"))
    c.add("near_vocab_invalid_utf8", tok_input(0x0E, 64, vocab + b"\xc3\x28\n", b"x"))
    c.add("near_json_bpe", tok_input(0x01, 64, b'{"model":{"type":"BPE","vocab":{}}}', b"x"))
    if real:
        real_vocab = read(os.path.join(real, "vocab.txt")).decode().splitlines()
        sample = real_vocab[:110] + real_vocab[1000::150]
        c.add("vocab_minilm_sample_txt", tok_input(
            0x0E, 128, "\n".join(sample).encode() + b"\n", TEXTS[1] + b" " + TEXTS[8]))
        real_ids = {t: i for i, t in enumerate(real_vocab)}
        c.add("vocab_minilm_sample_json", tok_input(
            0x11, 128, tokenizer_json(sample, real_ids), TEXTS[0] + b" " + TEXTS[3]))


# ---- adapter ----------------------------------------------------------------

HIDDEN, INTERMEDIATE, LAYERS = 64, 128, 2   # the tiny model's sizes
LINEARS = [("attention.self.query", HIDDEN, HIDDEN), ("attention.self.key", HIDDEN, HIDDEN),
           ("attention.self.value", HIDDEN, HIDDEN), ("attention.output.dense", HIDDEN, HIDDEN),
           ("intermediate.dense", HIDDEN, INTERMEDIATE), ("output.dense", INTERMEDIATE, HIDDEN)]


def adapter_config(r, targets, alpha=16, **extra):
    cfg = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": "tiny",
           "r": r, "lora_alpha": alpha, "lora_dropout": 0.1, "target_modules": targets,
           "bias": "none", "use_rslora": False, "use_dora": False,
           "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
           "modules_to_save": None}
    cfg.update(extra)
    return json.dumps(cfg, indent=2).encode()


def values(dtype, count, scale):
    """count values of a dtype: varied small floats, or integer zeros."""
    if dtype == "F32":
        return f32(count, scale)
    if dtype.startswith("I"):
        return pack(dtype, [0] * count)
    return pack(dtype, [scale] * count)


def adapter_tensors(r, which, labels, dtype="F32", hidden=HIDDEN, layers=LAYERS):
    """PEFT-named tensors of a LoRA adapter on the linears numbered which."""
    out = []
    for l in range(layers):
        for w in which:
            path, n_in, n_out = LINEARS[w]
            if hidden != HIDDEN:
                n_in = n_out = hidden
            p = "base_model.model.encoder.layer.%d.%s." % (l, path)
            out.append((p + "lora_A.weight", dtype, [r, n_in], values(dtype, r * n_in, 0.01)))
            out.append((p + "lora_B.weight", dtype, [n_out, r], values(dtype, n_out * r, 0.0)))
    if labels > 0:
        out.append(("base_model.model.classifier.weight", dtype, [labels, HIDDEN],
                    values(dtype, labels * HIDDEN, 0.02)))
        out.append(("base_model.model.classifier.bias", dtype, [labels], values(dtype, labels, 0.0)))
    return sorted(out)


def adapter_input(head, config, weights):
    return bytes([head]) + struct.pack("<H", len(config)) + config + weights


def adapter_seeds(c, tiny, real):
    qv = [0, 2]
    c.add("valid_r2_query_value", adapter_input(
        0, adapter_config(2, ["query", "value"]), st_bytes(adapter_tensors(2, qv, 0), {"format": "pt"})))
    c.add("valid_r1_all_classifier", adapter_input(
        2, adapter_config(1, ["query", "key", "value", "dense"]),
        st_bytes(adapter_tensors(1, range(6), 2), {"format": "pt"})))
    c.add("valid_r1_key_regression_rslora", adapter_input(
        1, adapter_config(1, "key", alpha=2.5, use_rslora=True),
        st_bytes(adapter_tensors(1, [1], 1))))
    c.add("valid_r1_output_f16", adapter_input(
        3, adapter_config(1, ["attention.output.dense", "output.dense"]),
        st_bytes(adapter_tensors(1, [3, 5], 3, dtype="F16"))))
    c.add("valid_r1_intermediate_bf16", adapter_input(
        0, adapter_config(1, ["intermediate.dense"]), st_bytes(adapter_tensors(1, [4], 0, dtype="BF16"))))
    c.add("valid_default_config_rejected", adapter_input(
        0, b"not json", st_bytes(adapter_tensors(8, qv, 0))))
    # near-valid
    nan_weights = adapter_tensors(1, qv, 0)
    name, dtype, shape, _ = nan_weights[0]
    nan_weights[0] = (name, dtype, shape, pack("F32", [float("nan")] * (shape[0] * shape[1])))
    c.add("near_nan_weight", adapter_input(0, adapter_config(1, ["query", "value"]), st_bytes(nan_weights)))
    c.add("near_missing_tensor", adapter_input(
        0, adapter_config(1, ["query", "value"]), st_bytes(adapter_tensors(1, qv, 0)[1:])))
    c.add("near_extra_tensor", adapter_input(
        0, adapter_config(1, ["query"]), st_bytes(adapter_tensors(1, qv, 0))))
    c.add("near_minilm_shapes_r1", adapter_input(
        0, adapter_config(1, ["query", "value"]), st_bytes(adapter_tensors(1, qv, 0, hidden=384))))
    c.add("near_int_weights", adapter_input(
        0, adapter_config(1, ["query"]), st_bytes(adapter_tensors(1, [0], 0, dtype="I32"))))
    c.add("config_dora_no_weights", adapter_input(0, adapter_config(1, ["query"], use_dora=True), b""))
    c.add("near_config_dropout_5", adapter_input(0, adapter_config(1, ["query"], lora_dropout=5), b""))
    c.add("near_config_unknown_target", adapter_input(0, adapter_config(1, ["fc1"]), b""))
    # the real PEFT adapter of all-MiniLM-L6-v2: its config, and its weights cut short
    config = read(os.path.join(REFERENCE, "peft_adapter_config.json"))
    weights = read(os.path.join(REFERENCE, "peft_adapter_model.safetensors"))
    head_len = struct.unpack("<Q", weights[:8])[0]
    c.add("real_peft_adapter", adapter_input(0, config, weights[:8 + head_len + 1024]))
    # PEFT's own configs of every method it has (for all-MiniLM-L6-v2: wrong shapes here)
    methods = os.path.join(REFERENCE, "methods")
    for method in sorted(os.listdir(methods)) if os.path.isdir(methods) else []:
        config = read(os.path.join(methods, method, "adapter_config.json"))
        weights = read(os.path.join(methods, method, "adapter_model.safetensors"))
        head_len = struct.unpack("<Q", weights[:8])[0]
        c.add("real_peft_" + method, adapter_input(2, config, weights[:8 + head_len + 1024]))
    # raw NUL bytes inside the config text (found by the fuzzer: cJSON reads them as the end of a string)
    c.add("near_config_raw_nuls",
          b'\x02\x7f\x01{\n  "peft_type": "BITFIT\x00\xf0a\x00\x00A",\n "r": 1,\n "lora_alpha": 16,\n'
          b'   "target_modules": [\n  \x00\x00"value",\n    "key",\n    "dense"\n  ],\n\n'
          b'  "u_e": null\n}z"t')
    # a valid seed per adapter method (DoRA, IA3, BitFit, bottleneck, prompt, prefix and
    # combinations), written by the harness itself with the engine's serialiser
    harness = os.path.join(ROOT, "build", "fuzz", "fuzz_adapter")
    if os.access(harness, os.X_OK):
        subprocess.run([harness], check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, FUZZ_ADAPTER_SEEDS=c.dir, PEFT_TINY_MODEL_DIR=tiny))
    else:
        print("make_corpus: %s is not built (test/fuzz/build.sh): no seeds for the other "
              "adapter methods" % harness)


# ---- gguf -------------------------------------------------------------------

DECODER_GGUF = "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF value types (their numbers in the file) and the struct code of each scalar
G_U8, G_I8, G_U16, G_I16, G_U32, G_I32, G_F32, G_BOOL, G_STR, G_ARR, G_U64, G_I64, G_F64 = range(13)
G_PACK = {G_U8: "B", G_I8: "b", G_U16: "H", G_I16: "h", G_U32: "I", G_I32: "i", G_F32: "f",
          G_BOOL: "?", G_U64: "Q", G_I64: "q", G_F64: "d"}
# ggml tensor types this reader knows: number -> (values per block, bytes per block)
GGML_LAYOUT = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22),
               7: (32, 24), 8: (32, 34), 10: (256, 84), 11: (256, 110), 12: (256, 144),
               13: (256, 176), 14: (256, 210)}


def g_str(text):
    if isinstance(text, str):
        text = text.encode("utf-8")
    return struct.pack("<Q", len(text)) + text


def g_value(vtype, value):
    """The encoding of one value (no type code); an array value is (elem_type, [values])."""
    if vtype == G_STR:
        return g_str(value)
    if vtype == G_ARR:
        elem_type, items = value
        return (struct.pack("<IQ", elem_type, len(items)) +
                b"".join(g_value(elem_type, v) for v in items))
    return struct.pack("<" + G_PACK[vtype], value)


def g_kv(key, vtype, value):
    return g_str(key) + struct.pack("<I", vtype) + g_value(vtype, value)


def gguf_bytes(kvs, tensors, version=3, alignment=32, pad_end=True, offsets=None):
    """A GGUF image: kvs [(key, type, value)] (or raw bytes for one), tensors [(name, dims,
    ggml type, data)] placed in order (or at the given offsets)."""
    body = b"".join(kv if isinstance(kv, bytes) else g_kv(*kv) for kv in kvs)
    infos, data, offset = b"", b"", 0
    for k, (name, dims, gtype, blob) in enumerate(tensors):
        infos += g_str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", gtype, offsets[k] if offsets else offset)
        padded = blob + bytes(-len(blob) % alignment)
        data += padded
        offset += len(padded)
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + body + infos
    head += bytes(-len(head) % alignment)
    out = head + data
    if not pad_end and tensors:
        out = out[:len(out) - (-len(tensors[-1][3]) % alignment)]
    return out


def tensor_blob(gtype, nelem, seed=1):
    values, nbytes = GGML_LAYOUT[gtype]
    return bytes((seed * 31 + k * 7) % 251 for k in range(nelem // values * nbytes))


def real_gguf_seed(path):
    """The real decoder's metadata (long arrays cut to 24 elements) and a few of its tensor infos,
    shrunk to one block row each: the keys, names and types a real file has, in a small input."""
    with open(path, "rb") as f:
        head = f.read(64 << 20)
    pos = 24
    version, ntensors, nkv = struct.unpack_from("<IQQ", head, 4)

    def take_str():
        nonlocal pos
        n = struct.unpack_from("<Q", head, pos)[0]
        s = head[pos + 8:pos + 8 + n]
        pos += 8 + n
        return s

    def take_value(vtype):
        nonlocal pos
        if vtype == G_STR:
            return take_str()
        if vtype == G_ARR:
            elem_type, count = struct.unpack_from("<IQ", head, pos)
            pos += 12
            return (elem_type, [take_value(elem_type) for _ in range(count)])
        v = struct.unpack_from("<" + G_PACK[vtype], head, pos)[0]
        pos += struct.calcsize("<" + G_PACK[vtype])
        return v

    kvs = []
    for _ in range(nkv):
        key = take_str()
        vtype = struct.unpack_from("<I", head, pos)[0]
        pos += 4
        value = take_value(vtype)
        if vtype == G_ARR:
            value = (value[0], value[1][:24])
        kvs.append((key, vtype, value))
    tensors = []
    for _ in range(ntensors):
        name = take_str()
        ndim = struct.unpack_from("<I", head, pos)[0]
        dims = struct.unpack_from("<%dQ" % ndim, head, pos + 4)
        gtype = struct.unpack_from("<I", head, pos + 4 + 8 * ndim)[0]
        pos += 4 + 8 * ndim + 12
        tensors.append((name, dims, gtype))
    keep = [t for t in tensors if t[0].startswith((b"blk.0.", b"output_norm", b"token_embd"))]
    small = [(name, [GGML_LAYOUT[gtype][0]] + [1] * (len(dims) - 1), gtype,
              tensor_blob(gtype, GGML_LAYOUT[gtype][0], k))
             for k, (name, dims, gtype) in enumerate(keep)]
    return gguf_bytes(kvs, small, version=version)


def gguf_seeds(c, decoder):
    every_scalar = [("t.u8", G_U8, 200), ("t.i8", G_I8, -100), ("t.u16", G_U16, 60000),
                    ("t.i16", G_I16, -30000), ("t.u32", G_U32, 4000000000), ("t.i32", G_I32, -2000000000),
                    ("t.f32", G_F32, 0.25), ("t.bool", G_BOOL, True), ("t.u64", G_U64, 2 ** 40 + 7),
                    ("t.i64", G_I64, -(2 ** 40) - 7), ("t.f64", G_F64, -1.5e300),
                    ("t.str", G_STR, "caf\u00e9 \u65e5\u672c"), ("t.empty", G_STR, "")]
    arrays = [("a.%d" % t, G_ARR, (t, [v, v])) for k, t, v in
              [(0, G_U8, 1), (1, G_I8, -1), (2, G_U16, 2), (3, G_I16, -2), (4, G_U32, 3),
               (5, G_I32, -3), (6, G_F32, 0.5), (7, G_BOOL, False), (10, G_U64, 4), (11, G_I64, -4),
               (12, G_F64, 1e-300)]]
    arrays += [("a.str", G_ARR, (G_STR, ["\u0120a", "", "b\x00c"])), ("a.none", G_ARR, (G_U32, [])),
               ("a.nested", G_ARR, (G_ARR, [(G_U8, [1, 2]), (G_STR, ["x"]), (G_ARR, [(G_ARR, [(G_U8, [9])])])]))]
    f32 = [("v.f32", [4, 2], 0, tensor_blob(0, 8))]
    c.add("valid_small_fixture", read(os.path.join(REFERENCE, "small.gguf")))
    c.add("valid_every_value_type", gguf_bytes(
        [("general.architecture", G_STR, "llama")] + every_scalar + arrays, f32))
    c.add("valid_v2", gguf_bytes([("general.name", G_STR, "v2")], f32, version=2))
    c.add("valid_header_only", gguf_bytes([], []))
    c.add("valid_every_tensor_type", gguf_bytes(
        [("general.alignment", G_U32, 32)],
        [("t.%s" % gtype, [GGML_LAYOUT[gtype][0], 2], gtype, tensor_blob(gtype, 2 * GGML_LAYOUT[gtype][0], gtype))
         for gtype in sorted(GGML_LAYOUT)] + [("t.4d", [1, 2, 1, 3], 0, tensor_blob(0, 6))]))
    c.add("valid_alignment_1_unpadded", gguf_bytes(
        [("general.alignment", G_U32, 1)], [("a", [3], 1, tensor_blob(1, 3)), ("b", [1], 0, tensor_blob(0, 1))],
        alignment=1))
    c.add("valid_alignment_256", gguf_bytes(
        [("general.alignment", G_U32, 256)], [("a", [32], 8, tensor_blob(8, 32)), ("b", [2], 0, tensor_blob(0, 2))],
        alignment=256, pad_end=False))
    if decoder:
        c.add("real_smollm2_metadata_small_tensors", real_gguf_seed(decoder))
    # the published chat templates (test/fixtures/reference/chat/), as the GGUF key the generation code reads
    chat = os.path.join(REFERENCE, "chat")
    for name in sorted(os.listdir(chat)) if os.path.isdir(chat) else []:
        if name.endswith(".jinja"):
            c.add("chat_template_" + name[:-len(".jinja")].replace(".", "_"), gguf_bytes(
                [("general.architecture", G_STR, "llama"),
                 ("tokenizer.chat_template", G_STR, read(os.path.join(chat, name)))], []))
    # near-valid: each breaks one rule
    c.add("near_duplicate_key", gguf_bytes([("k", G_U8, 1), ("k", G_U8, 2)], []))
    c.add("near_bool_2", gguf_bytes([g_str("k") + struct.pack("<IB", G_BOOL, 2)], []))
    c.add("near_unknown_value_type", gguf_bytes([g_str("k") + struct.pack("<IB", 13, 1)], []))
    deep = (G_U8, [1])
    for _ in range(4):
        deep = (G_ARR, [deep])
    c.add("near_arrays_too_deep", gguf_bytes([("k", G_ARR, deep)], []))
    c.add("near_alignment_3", gguf_bytes([("general.alignment", G_U32, 3)], []))
    c.add("near_alignment_u64", gguf_bytes([("general.alignment", G_U64, 64)], []))
    c.add("near_unknown_tensor_type", gguf_bytes([], [("a", [4], 4, bytes(16))]))
    c.add("near_row_not_a_block", gguf_bytes([], [("q", [16], 8, bytes(34))]))
    c.add("near_five_dims", gguf_bytes([], [("a", [1, 1, 1, 1, 2], 0, bytes(8))]))
    c.add("near_zero_dim", gguf_bytes([], [("a", [0, 2], 0, b"")]))
    two = [("a", [8], 0, tensor_blob(0, 8)), ("b", [8], 0, tensor_blob(0, 8))]
    c.add("near_overlap", gguf_bytes([], two, offsets=[0, 0]))
    c.add("near_misaligned", gguf_bytes([], two, offsets=[0, 36]))
    c.add("near_data_cut", gguf_bytes([], two)[:-40])
    c.add("near_duplicate_tensor", gguf_bytes([], [("a", [1], 0, bytes(4)), ("a", [1], 0, bytes(4))]))
    c.add("near_key_with_nul", gguf_bytes([("k\x00ey", G_U8, 1)], []))
    c.add("near_empty_key", gguf_bytes([("", G_U8, 1)], []))
    c.add("near_huge_counts", b"GGUF" + struct.pack("<IQQ", 3, 2 ** 20, 2 ** 20))
    c.add("near_huge_string", gguf_bytes([g_str("k") + struct.pack("<IQ", G_STR, 2 ** 63) + b"abc"], []))
    c.add("near_huge_array", gguf_bytes([g_str("k") + struct.pack("<IIQ", G_ARR, G_STR, 2 ** 62) + g_str("a")], []))
    c.add("near_version_1", gguf_bytes([], [], version=1))


def real_decoder_gguf():
    """The real SmolLM2-135M-Instruct GGUF ($PEFT_DECODER_GGUF or a fetch_model cache), or None."""
    env = os.environ.get("PEFT_DECODER_GGUF")
    if env:
        return env if os.path.isfile(env) else None
    caches = [os.environ.get("PEFT_CACHE_DIR"), "/var/cache/peft",
              os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "peft")]
    for cache in filter(None, caches):
        path = os.path.join(cache, DECODER_GGUF)
        if os.path.isfile(path):
            return path
    return None


HARNESSES = ["fuzz_safetensors", "fuzz_config", "fuzz_tokenizer", "fuzz_adapter", "fuzz_gguf"]


def main(argv):
    only = HARNESSES
    if "--only" in argv:
        at = argv.index("--only")
        only = argv[at + 1].split(",")
        argv = argv[:at] + argv[at + 2:]
        unknown = [h for h in only if h not in HARNESSES]
        if unknown:
            print("make_corpus: unknown harness %s (%s)" % (", ".join(unknown), ", ".join(HARNESSES)))
            return 2
    outdir = argv[0] if argv else os.path.join(HERE, "corpus")
    real = real_model_dir()
    with tempfile.TemporaryDirectory() as tmp:
        tiny = os.path.join(tmp, "tiny")
        subprocess.run([sys.executable, os.path.join(ROOT, "test", "fixtures", "make_tiny_model.py"),
                        tiny], check=True, stdout=subprocess.DEVNULL)
        seeds = {"fuzz_safetensors": lambda c: safetensors_seeds(c, tiny, real),
                 "fuzz_config": lambda c: config_seeds(c, tiny, real),
                 "fuzz_tokenizer": lambda c: tokenizer_seeds(c, tiny, real),
                 "fuzz_adapter": lambda c: adapter_seeds(c, tiny, real),
                 "fuzz_gguf": lambda c: gguf_seeds(c, real_decoder_gguf())}
        for harness in only:
            seeds[harness](Corpus(outdir, harness))
    total = 0
    for dirpath, _, files in os.walk(outdir):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    print("make_corpus: %s: %d bytes" % (outdir, total))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
