/*
 * cli_files.h - reading the files of an adapter folder for peft-engine's
 * commands (train's predict/embed, generate and logits, export-gguf).
 */
#ifndef PEFT_CLI_FILES_H
#define PEFT_CLI_FILES_H

#include <stddef.h>

/*
 * dir/name read whole into a NUL-terminated malloc'ed buffer of *len
 * bytes; NULL, after "peft-engine: cannot read PATH" on stderr, when it
 * cannot be read or holds more than 16 GB.
 */
char	   *cli_read_file(const char *dir, const char *name, size_t *len);

#endif
