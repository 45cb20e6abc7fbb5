/*
 * cli_files.c - reading the files of an adapter folder (cli_files.h).
 */
#include "cli_files.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The largest file read whole: adapters are megabytes; a mistaken path to a model must not be read. */
#define CLI_MAX_FILE ((long) 1 << 34)

char *
cli_read_file(const char *dir, const char *name, size_t *len)
{
	char		path[4096];
	FILE	   *f;
	long		size;
	char	   *buf = NULL;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	errno = 0;
	if ((f = fopen(path, "rb")) == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 ||
		size > CLI_MAX_FILE || fseek(f, 0, SEEK_SET) != 0 ||
		(buf = malloc((size_t) size + 1)) == NULL || fread(buf, 1, (size_t) size, f) != (size_t) size)
	{
		fprintf(stderr, "peft-engine: cannot read %s%s%s\n", path, errno ? ": " : "",
				errno ? strerror(errno) : "");
		free(buf);
		if (f)
			fclose(f);
		return NULL;
	}
	fclose(f);
	buf[size] = '\0';
	*len = (size_t) size;
	return buf;
}
