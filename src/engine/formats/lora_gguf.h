/*
 * lora_gguf.h - a Hugging Face PEFT LoRA adapter over a LLaMA-family
 * decoder as llama.cpp's LoRA GGUF, the file `llama-cli --lora`, Ollama's
 * ADAPTER and llama-cpp-python's lora_path load (what llama.cpp's
 * convert_lora_to_gguf.py writes for a LLaMA adapter).
 *
 * Input: adapter_config.json (peft_type "LORA", no DoRA, nothing PEFT
 * computes beyond B A on the seven linears) and adapter_model.safetensors
 * (base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight ...,
 * A [r, in] and B [out, r], any float dtype), checked tensor by tensor
 * against the model: layer index, linear, shape, rank, finite values, and
 * both factors of every targeted linear of every layer.
 *
 * Output, GGUF v3: general.architecture "llama", general.type "adapter",
 * adapter.type "lora", adapter.lora.alpha (f32), and F32 tensors
 * blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down}.weight
 * .lora_a (ggml dims {in, r}) and .lora_b ({r, out}): the same bytes as
 * Hugging Face's row-major A and B, but for the rows of q's and k's B,
 * which llama.cpp's converter permutes as it permutes the q and k weights
 * (each head's rotate-half order turned into interleaved pairs; k over
 * the key/value heads).  llama.cpp scales by alpha / r with r read from
 * the tensors, so alpha is written as PEFT's effective scale times r
 * (lora_alpha itself, or lora_alpha * sqrt(r) with use_rslora).
 */
#ifndef PEFT_ENGINE_LORA_GGUF_H
#define PEFT_ENGINE_LORA_GGUF_H

#include <stddef.h>
#include <stdint.h>
#include "llama_model.h"
#include "status.h"

/* The GGUF bytes (malloc'ed, the caller frees) of a PEFT LoRA adapter over model. */
PeftCode	lora_gguf_convert(const LlamaModel *model, const char *config, size_t config_len,
							  const uint8_t *weights, size_t weights_len, uint8_t **out,
							  size_t *out_len, PeftError *err);

#endif
