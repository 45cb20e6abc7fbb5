/*
 * test_util.h - small helpers shared by the engine unit tests: where the
 * fixtures and models are, and reading integer tensors and JSON fixtures.
 */
#ifndef PEFT_TEST_UTIL_H
#define PEFT_TEST_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cjson/cJSON.h>

#include "safetensors.h"

#ifndef PEFT_SOURCE_DIR
#define PEFT_SOURCE_DIR "."
#endif

/* Path of a file in the source tree (static buffer, one at a time). */
static inline const char *
source_path(const char *rel)
{
	static char buf[4096];

	snprintf(buf, sizeof(buf), "%s/%s", PEFT_SOURCE_DIR, rel);
	return buf;
}

/* Folder of the real all-MiniLM-L6-v2 ($PEFT_MODEL_DIR or the root cache), or NULL. */
static inline const char *
real_model_dir(void)
{
	static char buf[4096];
	const char *env = getenv("PEFT_MODEL_DIR");
	struct stat st;

	snprintf(buf, sizeof(buf), "%s/model.safetensors",
			 env && *env ? env : "/var/cache/peft/all-MiniLM-L6-v2");
	if (stat(buf, &st) != 0)
		return NULL;
	buf[strlen(buf) - strlen("/model.safetensors")] = '\0';
	return buf;
}

/*
 * Folder of the tiny test model: $PEFT_TINY_MODEL_DIR, else generated once
 * per test binary into a temporary folder by test/fixtures/make_tiny_model.py.
 */
static inline const char *
tiny_model_dir(void)
{
	static char buf[256];
	char		cmd[4096 + 512];
	const char *env = getenv("PEFT_TINY_MODEL_DIR");
	struct stat st;

	if (buf[0])
		return buf;
	if (env && *env)
	{
		char		probe[4096];

		snprintf(probe, sizeof(probe), "%s/model.safetensors", env);
		if (stat(probe, &st) == 0)
		{
			snprintf(buf, sizeof(buf), "%s", env);
			return buf;
		}
	}
	snprintf(buf, sizeof(buf), "/tmp/peft-unit-tiny-%d", (int) getpid());
	snprintf(cmd, sizeof(cmd), "python3 '%s/test/fixtures/make_tiny_model.py' '%s' >/dev/null",
			 PEFT_SOURCE_DIR, buf);
	if (system(cmd) != 0)
	{
		buf[0] = '\0';
		return NULL;
	}
	return buf;
}

/* An integer tensor (I64 or I32) as a malloc'ed int32 array; NULL if absent. */
static inline int32_t *
tensor_int32(const StFile *file, const char *name, size_t *count)
{
	const StTensor *t = st_find(file, name);
	int32_t    *out;

	if (t == NULL || (t->dtype != ST_I64 && t->dtype != ST_I32))
		return NULL;
	out = malloc((t->nelem ? t->nelem : 1) * sizeof(int32_t));
	for (size_t i = 0; i < t->nelem; i++)
	{
		if (t->dtype == ST_I64)
		{
			int64_t		v;

			memcpy(&v, t->data + i * 8, 8);
			out[i] = (int32_t) v;
		}
		else
			memcpy(&out[i], t->data + i * 4, 4);
	}
	if (count)
		*count = t->nelem;
	return out;
}

/* A floating tensor as a malloc'ed real array; NULL if absent. */
static inline real *
tensor_real(const StFile *file, const char *name, size_t *count)
{
	const StTensor *t = st_find(file, name);
	real	   *out;

	if (t == NULL)
		return NULL;
	out = malloc((t->nelem ? t->nelem : 1) * sizeof(real));
	if (st_to_real(t, out, t->nelem, NULL) != PEFT_OK)
	{
		free(out);
		return NULL;
	}
	if (count)
		*count = t->nelem;
	return out;
}

/* Parse a JSON file; NULL on failure. */
static inline cJSON *
load_json_file(const char *path)
{
	FILE	   *f = fopen(path, "rb");
	char	   *text;
	long		n;
	cJSON	   *json;

	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	text = malloc(n + 1);
	if (fread(text, 1, n, f) != (size_t) n)
		n = 0;
	text[n] = '\0';
	fclose(f);
	json = cJSON_Parse(text);
	free(text);
	return json;
}

#endif
