/*
 * decoder_commands.h - peft-engine's generate and logits commands
 * (decoder_commands.c).
 */
#ifndef PEFT_CLI_DECODER_COMMANDS_H
#define PEFT_CLI_DECODER_COMMANDS_H

#include "engine_api.h"

/* peft-engine generate FLAGS (argv[0] is the command word); the exit status. */
int			command_generate(const PeftEngineApi *api, int argc, char **argv);
/* peft-engine logits FLAGS. */
int			command_logits(const PeftEngineApi *api, int argc, char **argv);

#endif
