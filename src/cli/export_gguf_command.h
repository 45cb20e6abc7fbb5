/*
 * export_gguf_command.h - peft-engine's export-gguf command
 * (export_gguf_command.c).
 */
#ifndef PEFT_CLI_EXPORT_GGUF_COMMAND_H
#define PEFT_CLI_EXPORT_GGUF_COMMAND_H

#include "engine_api.h"

/* peft-engine export-gguf FLAGS (argv[0] is the command word); the exit status. */
int			command_export_gguf(const PeftEngineApi *api, int argc, char **argv);

#endif
