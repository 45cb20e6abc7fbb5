/*
 * export_gguf_command.c - peft-engine's export-gguf command:
 *
 *   peft-engine export-gguf --model FILE.gguf|DIR --adapter DIR --out FILE.gguf
 *
 * reads a Hugging Face PEFT LoRA adapter over the decoder (DIR holds
 * adapter_config.json and adapter_model.safetensors, as save_pretrained
 * writes them) and writes it as llama.cpp's LoRA GGUF, the file
 * `llama-cli -m MODEL.gguf --lora FILE.gguf`, Ollama's ADAPTER and
 * llama-cpp-python's lora_path load.  The engine converts it
 * (adapter_export_gguf), as peft_export_gguf does in the server.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_files.h"
#include "export_gguf_command.h"

/* Adapter files larger than this are refused (a 70B model's rank-64 LoRA is about 0.7 GB). */

enum
{
	EF_MODEL = 1, EF_ADAPTER, EF_OUT, EF_HELP
};

static const struct option export_flags[] = {
	{"model", required_argument, NULL, EF_MODEL},
	{"adapter", required_argument, NULL, EF_ADAPTER},
	{"out", required_argument, NULL, EF_OUT},
	{"help", no_argument, NULL, EF_HELP},
	{NULL, 0, NULL, 0}
};

/* Print the usage (to stderr after msg: exit 2; else stdout: exit 0). */
static void
export_usage(const char *msg)
{
	FILE	   *f = msg ? stderr : stdout;

	if (msg)
		fprintf(f, "peft-engine: %s\n", msg);
	fprintf(f,
			"usage: peft-engine export-gguf --model FILE.gguf|DIR --adapter DIR --out FILE.gguf\n"
			"DIR holds adapter_config.json and adapter_model.safetensors (a PEFT LoRA over the\n"
			"model); FILE.gguf is llama.cpp's LoRA adapter (llama-cli --lora FILE.gguf).\n");
	exit(msg ? 2 : 0);
}


/* peft-engine export-gguf. */
int
command_export_gguf(const PeftEngineApi *api, int argc, char **argv)
{
	const char *model_path = NULL,
			   *adapter = NULL,
			   *out_path = NULL;
	PeftModelHandle *model;
	PeftModelInfo info;
	PeftError	err = {0};
	char	   *config,
			   *weights;
	size_t		config_len,
				weights_len,
				gguf_len;
	uint8_t    *gguf;
	FILE	   *out;
	int			c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", export_flags, NULL)) != -1)
		switch (c)
		{
			case EF_MODEL: model_path = optarg; break;
			case EF_ADAPTER: adapter = optarg; break;
			case EF_OUT: out_path = optarg; break;
			case EF_HELP: export_usage(NULL); break;
			default: export_usage("unknown flag (--help lists them)");
		}
	if (optind < argc)
		export_usage("unexpected argument");
	if (model_path == NULL || adapter == NULL || out_path == NULL)
		export_usage("export-gguf needs --model, --adapter and --out");
	if ((config = cli_read_file(adapter, "adapter_config.json", &config_len)) == NULL ||
		(weights = cli_read_file(adapter, "adapter_model.safetensors", &weights_len)) == NULL)
		return 1;
	if (api->init(1, &err) != PEFT_OK || api->model_open(model_path, &model, &info, &err) != PEFT_OK ||
		api->adapter_export_gguf(model, config, config_len, (const uint8_t *) weights, weights_len, &gguf,
								 &gguf_len, &err) != PEFT_OK)
	{
		fprintf(stderr, "peft-engine: %s: %s\n", api->code_name(err.code), err.message);
		return 1;
	}
	if ((out = fopen(out_path, "wb")) == NULL || fwrite(gguf, 1, gguf_len, out) != gguf_len ||
		fclose(out) != 0)
	{
		fprintf(stderr, "peft-engine: cannot write %s\n", out_path);
		return 1;
	}
	printf("wrote %s (%zu bytes)\n", out_path, gguf_len);
	api->free_buffer(gguf);
	api->model_close(model);
	free(config);
	free(weights);
	return 0;
}
