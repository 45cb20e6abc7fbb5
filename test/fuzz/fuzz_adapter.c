/*
 * fuzz_adapter.c - libFuzzer harness for what peft.adapters holds, which
 * any user can write: the config (adapter_config.json text, read by
 * adapter_options_from_config) and the weights (safetensors bytes, read by
 * adapter_load_weights into a network built over the tiny BERT), in the
 * order session_adapter_open applies them (src/engine/formats/adapter_io.c).
 *
 * Input: a head byte (num_labels = byte % 4: 0 no head, 1 regression,
 * 2 and 3 classes), a 16-bit little-endian length N, N bytes of config,
 * and the rest is the weights.  A config that is refused (or whose network
 * network_create refuses) still lets the weights be tried, against the
 * default adapter (LoRA, r 8, query and value).  An accepted config must
 * describe a valid method and read back the same through
 * adapter_config_json; accepted weights must survive adapter_serialize and
 * a second load.  The network built for a config is kept while the next
 * inputs carry the same head byte and config bytes.
 *
 * With FUZZ_ADAPTER_SEEDS=DIR the binary writes a valid seed per adapter
 * method into DIR (weights from the engine's own initialisation) and exits:
 * test/fuzz/make_corpus.py uses it.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_io.h"
#include "bert.h"
#include "fuzz_common.h"
#include "network.h"

/* The tiny BERT, loaded once per process. */
static BertModel *base;

/* The network of the last head byte + config bytes (the key), reused while they repeat. */
static Network *cached;
static uint8_t *cached_key;
static size_t cached_key_len;

/* A seed per method: head byte and adapter_config.json text (written with FUZZ_ADAPTER_SEEDS). */
static const struct
{
	const char *name;
	int			head;
	const char *config;
}			seeds[] = {
	{"seed_lora_r2", 2, "{\"peft_type\": \"LORA\", \"task_type\": null, \"r\": 2, \"lora_alpha\": 16,"
	 " \"lora_dropout\": 0.1, \"target_modules\": [\"query\", \"value\"], \"bias\": \"none\","
	 " \"use_rslora\": false, \"use_dora\": false, \"fan_in_fan_out\": false,"
	 " \"rank_pattern\": {}, \"alpha_pattern\": {}, \"layers_to_transform\": null,"
	 " \"modules_to_save\": [\"classifier\"]}"},
	{"seed_dora_bitfit", 3, "{\"peft_type\": \"LORA\", \"r\": 1, \"lora_alpha\": 2,"
	 " \"target_modules\": [\"key\", \"dense\"], \"bias\": \"all\", \"use_rslora\": true,"
	 " \"use_dora\": true}"},
	{"seed_ia3", 1, "{\"peft_type\": \"IA3\", \"target_modules\": [\"key\", \"value\","
	 " \"output.dense\"], \"feedforward_modules\": [\"output.dense\"], \"init_ia3_weights\": true}"},
	{"seed_bitfit", 0, "{\"peft_type\": \"BITFIT\", \"peft_pg_method\": \"bitfit\"}"},
	{"seed_bottleneck", 2, "{\"peft_type\": \"BOTTLENECK\", \"peft_pg_method\": \"adapter\","
	 " \"reduction_factor\": 16, \"adapter_placement\": \"houlsby\"}"},
	{"seed_prompt", 2, "{\"peft_type\": \"PROMPT_TUNING\", \"task_type\": \"FEATURE_EXTRACTION\","
	 " \"num_virtual_tokens\": 4, \"token_dim\": 64, \"num_transformer_submodules\": 1,"
	 " \"num_attention_heads\": 4, \"num_layers\": 2, \"prompt_tuning_init\": \"RANDOM\"}"},
	{"seed_prefix", 0, "{\"peft_type\": \"PREFIX_TUNING\", \"num_virtual_tokens\": 2,"
	 " \"encoder_hidden_size\": 64, \"prefix_projection\": false}"},
	{"seed_lora_adapter_prefix", 2, "{\"peft_type\": \"LORA\", \"peft_pg_method\":"
	 " \"lora+adapter+prefix\", \"r\": 1, \"lora_alpha\": 1, \"target_modules\": \"query\","
	 " \"reduction_factor\": 32, \"adapter_placement\": \"pfeiffer\", \"num_virtual_tokens\": 3}"},
	{"seed_ia3_bitfit_prompt", 3, "{\"peft_type\": \"IA3\", \"peft_pg_method\": \"ia3+bitfit+prompt\","
	 " \"target_modules\": \"intermediate.dense\", \"feedforward_modules\": \"intermediate.dense\","
	 " \"num_virtual_tokens\": 1}"},
};

/* Set num_labels and the task from the head selector, as session_adapter_open does. */
static void
set_head(NetworkOptions *opts, int head)
{
	opts->num_labels = head;
	opts->task = head == 1 ? PEFT_TASK_REGRESSION : PEFT_TASK_CLASSIFICATION;
}

/* The default adapter, used when the config is refused. */
static NetworkOptions
default_options(int head)
{
	NetworkOptions opts = {0};

	opts.lora.r = 8;
	opts.lora.alpha = 16;
	opts.lora.targets[BERT_QUERY] = opts.lora.targets[BERT_VALUE] = true;
	set_head(&opts, head);
	return opts;
}

/* Whether any linear is flagged. */
static bool
any_flag(const bool flags[BERT_NUM_LINEAR])
{
	for (int w = 0; w < BERT_NUM_LINEAR; w++)
		if (flags[w])
			return true;
	return false;
}

/* Check that accepted options describe at least one method with valid values. */
static void
check_options(const NetworkOptions *o)
{
	bool		lora = any_flag(o->lora.targets);

	FUZZ_CHECK(lora || any_flag(o->ia3.targets) || o->bitfit || o->bottleneck.reduction > 0 ||
			   o->prompt_tokens > 0 || o->prefix_tokens > 0);
	if (lora)
	{
		FUZZ_CHECK(o->lora.r >= 1 && o->lora.r <= 4096);
		FUZZ_CHECK(o->lora.alpha > 0 && isfinite(o->lora.alpha));
		FUZZ_CHECK(o->lora.dropout >= 0 && o->lora.dropout < 1);
	}
	FUZZ_CHECK(!o->dora || lora);
	FUZZ_CHECK(!(lora && any_flag(o->ia3.targets)));
	FUZZ_CHECK(o->bottleneck.reduction >= 0 && o->bottleneck.reduction <= 65536);
	FUZZ_CHECK(o->prompt_tokens >= 0 && o->prompt_tokens <= 256);
	FUZZ_CHECK(o->prefix_tokens >= 0 && o->prefix_tokens <= 256);
	FUZZ_CHECK(o->prompt_tokens == 0 || o->prefix_tokens == 0);
}

/* Whether two option sets say the same about every method (what a config holds). */
static bool
same_methods(const NetworkOptions *a, const NetworkOptions *b)
{
	bool		lora = any_flag(a->lora.targets);

	if (lora && (a->lora.r != b->lora.r || a->lora.alpha != b->lora.alpha ||
				 a->lora.dropout != b->lora.dropout || a->lora.rslora != b->lora.rslora))
		return false;
	return memcmp(a->lora.targets, b->lora.targets, sizeof(a->lora.targets)) == 0 &&
		a->dora == b->dora &&
		memcmp(a->ia3.targets, b->ia3.targets, sizeof(a->ia3.targets)) == 0 &&
		memcmp(a->ia3.feedforward, b->ia3.feedforward, sizeof(a->ia3.feedforward)) == 0 &&
		a->bitfit == b->bitfit &&
		a->bottleneck.reduction == b->bottleneck.reduction &&
		(a->bottleneck.reduction == 0 ||
		 (a->bottleneck.after_attention == b->bottleneck.after_attention &&
		  a->bottleneck.after_ffn == b->bottleneck.after_ffn)) &&
		a->prompt_tokens == b->prompt_tokens && a->prefix_tokens == b->prefix_tokens;
}

/* An accepted config must read back the same through adapter_config_json. */
static void
check_config_round_trip(const Network *net)
{
	NetworkOptions again = {0};
	PeftError	err = {0};
	char	   *json = NULL;

	FUZZ_CHECK(adapter_config_json(net, "fuzz", &json, &err) == PEFT_OK);
	if (adapter_options_from_config(json, strlen(json), &again, &err) != PEFT_OK)
	{
		fprintf(stderr, "fuzz: adapter_config_json wrote what it cannot read: %s\n%s\n",
				err.message, json);
		abort();
	}
	if (!same_methods(&net->opts, &again))
	{
		fprintf(stderr, "fuzz: adapter_config_json does not read back the same:\n%s\n", json);
		abort();
	}
	free(json);
}

/* Accepted weights must serialise and load again to the same values. */
static void
check_weights_round_trip(Network *net)
{
	ParamSet   *ps = &net->params;
	size_t		bytes = ps->total * sizeof(real);
	real	   *saved = malloc(bytes > 0 ? bytes : 1);
	uint8_t    *out = NULL;
	size_t		len = 0;
	PeftError	err = {0};

	FUZZ_CHECK(saved != NULL);
	memcpy(saved, ps->values, bytes);
	for (size_t i = 0; i < ps->total; i++)
		FUZZ_CHECK(isfinite(ps->values[i]));
	FUZZ_CHECK(adapter_serialize(net, &out, &len, &err) == PEFT_OK);
	if (adapter_load_weights(net, out, len, &err) != PEFT_OK)
	{
		fprintf(stderr, "fuzz: adapter_serialize wrote what adapter_load_weights refuses: %s\n",
				err.message);
		abort();
	}
	FUZZ_CHECK(memcmp(saved, ps->values, bytes) == 0);
	free(out);
	free(saved);
}

/*
 * The network for this head byte and config: parse the config (checking
 * what it says) and build it, or fall back to the default adapter.
 */
static Network *
network_for(int head, const char *config, size_t config_len)
{
	NetworkOptions opts = {0};
	PeftError	err = {0};
	bool		config_ok;

	if (cached != NULL && cached_key_len == config_len + 1 && cached_key[0] == head &&
		memcmp(cached_key + 1, config, config_len) == 0)
		return cached;
	network_free(cached);
	cached = NULL;
	free(cached_key);
	cached_key = malloc(config_len + 1);
	FUZZ_CHECK(cached_key != NULL);
	cached_key[0] = (uint8_t) head;
	if (config_len > 0)
		memcpy(cached_key + 1, config, config_len);
	cached_key_len = config_len + 1;

	config_ok = adapter_options_from_config(config, config_len, &opts, &err) == PEFT_OK;
	if (config_ok)
	{
		check_options(&opts);
		set_head(&opts, head);
		memset(&err, 0, sizeof(err));
		if (network_create(base, &opts, &cached, &err) != PEFT_OK)
		{
			/* refused by the model (e.g. more virtual tokens than positions) */
			FUZZ_CHECK(cached == NULL && err.message[0] != '\0');
			config_ok = false;
		}
	}
	else
		FUZZ_CHECK(err.code != PEFT_OK && err.message[0] != '\0');
	if (config_ok)
		check_config_round_trip(cached);
	else
	{
		opts = default_options(head);
		FUZZ_CHECK(network_create(base, &opts, &cached, &err) == PEFT_OK);
	}
	return cached;
}

/* Write head byte, config length, config and weights as one seed file. */
static void
write_seed(const char *dir, const char *name, int head, const char *config,
		   const uint8_t *weights, size_t weights_len)
{
	char		path[4096];
	size_t		config_len = strlen(config);
	uint8_t		prefix[3] = {(uint8_t) head, (uint8_t) config_len, (uint8_t) (config_len >> 8)};
	FILE	   *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	FUZZ_CHECK(f != NULL);
	FUZZ_CHECK(fwrite(prefix, 1, 3, f) == 3 &&
			   fwrite(config, 1, config_len, f) == config_len &&
			   fwrite(weights, 1, weights_len, f) == weights_len);
	FUZZ_CHECK(fclose(f) == 0);
}

/* Write a valid seed per method into dir (FUZZ_ADAPTER_SEEDS). */
static void
write_seeds(const char *dir)
{
	for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++)
	{
		NetworkOptions opts = {0};
		PeftError	err = {0};
		Network    *net = NULL;
		uint8_t    *weights = NULL;
		size_t		len = 0;

		if (adapter_options_from_config(seeds[i].config, strlen(seeds[i].config), &opts,
										&err) != PEFT_OK)
		{
			fprintf(stderr, "fuzz: seed %s: %s\n", seeds[i].name, err.message);
			exit(1);
		}
		set_head(&opts, seeds[i].head);
		if (network_create(base, &opts, &net, &err) != PEFT_OK ||
			adapter_serialize(net, &weights, &len, &err) != PEFT_OK)
		{
			fprintf(stderr, "fuzz: seed %s: %s\n", seeds[i].name, err.message);
			exit(1);
		}
		write_seed(dir, seeds[i].name, seeds[i].head, seeds[i].config, weights, len);
		free(weights);
		network_free(net);
	}
}

/* Load the tiny model once per process (and write the seeds when asked). */
int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	PeftError	err = {0};
	const char *dir = fuzz_tiny_model_dir();
	const char *seed_dir = getenv("FUZZ_ADAPTER_SEEDS");

	if (bert_load(dir, &base, &err) != PEFT_OK)
	{
		fprintf(stderr, "fuzz: cannot load the tiny model from %s: %s\n", dir, err.message);
		exit(1);
	}
	if (seed_dir != NULL && *seed_dir)
	{
		write_seeds(seed_dir);
		exit(0);
	}
	return 0;
}

/* libFuzzer entry point: head byte, config length, config, weights. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	PeftError	err = {0};
	Network    *net;
	const char *config;
	const uint8_t *weights;
	size_t		config_len;
	size_t		weights_len;

	if (size < 3)
		return 0;
	config_len = fuzz_le16(data + 1);
	if (config_len > size - 3)
		config_len = size - 3;
	weights_len = size - 3 - config_len;
	config = (const char *) fuzz_guarded_copy(0, data + 3, config_len);
	weights = fuzz_guarded_copy(1, data + 3 + config_len, weights_len);

	net = network_for(data[0] % 4, config, config_len);
	if (adapter_load_weights(net, weights, weights_len, &err) == PEFT_OK)
		check_weights_round_trip(net);
	else
		FUZZ_CHECK(err.code != PEFT_OK && err.message[0] != '\0');
	return 0;
}
