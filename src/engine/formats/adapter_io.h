/*
 * adapter_io.h - an adapter's bytes and config in Hugging Face PEFT's
 * formats: weights as adapter_model.safetensors (PEFT tensor names, F32),
 * hyper-parameters as adapter_config.json.  These bytes are what
 * peft.adapters.weights and .config hold, and a user can write anything
 * there, so loading validates every name, shape and value.
 */
#ifndef PEFT_ENGINE_ADAPTER_IO_H
#define PEFT_ENGINE_ADAPTER_IO_H

#include <stddef.h>
#include <stdint.h>
#include "method_table.h"
#include "network.h"

/* Serialise every trainable parameter (malloc'ed bytes). */
PeftCode	adapter_serialize(const Network *net, uint8_t **out, size_t *len,
							  PeftError *err);

/*
 * Load weights into a network built with matching options: every parameter
 * must be present with its exact shape, no other tensor may be, and every
 * value must be finite.
 */
PeftCode	adapter_load_weights(Network *net, const uint8_t *bytes, size_t len,
								 PeftError *err);

/* adapter_config.json text for the network (malloc'ed, NUL-terminated). */
PeftCode	adapter_config_json(const Network *net, const char *base_model,
								char **out, PeftError *err);

/*
 * Read network options from adapter_config.json text: the method and its
 * modules and hyper-parameters (peft_type LORA with use_dora/use_rslora/
 * bias, IA3, BITFIT, BOTTLENECK, peft_pg_method), keeping the other
 * fields of opts (task, labels, dropout of the base model, seed).
 */
PeftCode	adapter_options_from_config(const char *json, size_t len,
										NetworkOptions *opts, PeftError *err);

/* The method name of options, e.g. "dora+bitfit". */
const char *adapter_method_name(const NetworkOptions *o, char *buf, size_t len);



#endif
