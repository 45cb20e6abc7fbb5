/*
 * test_util.h - small helpers shared by the engine unit tests: where the
 * fixtures and models are (and whether a missing real model is a failure),
 * temporary directories, and reading integer tensors and JSON fixtures.
 */
#ifndef PEFT_TEST_UTIL_H
#define PEFT_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
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

/* Make a fresh temporary directory; path receives its name. */
static inline void
make_temp_dir(char *path, size_t len)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(path, len, "%s/peft_test_XXXXXX", tmp && *tmp ? tmp : "/tmp");
	assert_non_null(mkdtemp(path));
}

/* Remove a directory tree made by make_temp_dir. */
static inline void
remove_tree(const char *path)
{
	char		cmd[512];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
	if (system(cmd) != 0)
		print_message("could not remove %s\n", path);
}

/*
 * The cache folders scripts/fetch_model may have used ($PEFT_CACHE_DIR,
 * /var/cache/peft as root, ${XDG_CACHE_HOME:-~/.cache}/peft otherwise);
 * returns how many were written to dirs.
 */
static inline int
fetch_model_caches(char dirs[3][1024])
{
	const char *env = getenv("PEFT_CACHE_DIR");
	const char *xdg = getenv("XDG_CACHE_HOME");
	const char *home = getenv("HOME");
	int			n = 0;

	if (env && *env)
		snprintf(dirs[n++], 1024, "%s", env);
	snprintf(dirs[n++], 1024, "/var/cache/peft");
	if (xdg && *xdg)
		snprintf(dirs[n++], 1024, "%s/peft", xdg);
	else if (home && *home)
		snprintf(dirs[n++], 1024, "%s/.cache/peft", home);
	return n;
}

/* Whether dir holds a model (its model.safetensors). */
static inline bool
has_model_file(const char *dir)
{
	char		path[8192];
	struct stat st;

	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	return stat(path, &st) == 0;
}

/*
 * Folder of the real all-MiniLM-L6-v2, or NULL when it is absent:
 * $PEFT_MODEL_DIR when set, else the first fetch_model cache that has it.
 */
static inline const char *
real_model_dir(void)
{
	static char buf[4096];
	const char *env = getenv("PEFT_MODEL_DIR");
	char		caches[3][1024];
	int			n;

	if (env && *env)
		return has_model_file(env) ? env : NULL;
	n = fetch_model_caches(caches);
	for (int i = 0; i < n; i++)
	{
		snprintf(buf, sizeof(buf), "%s/all-MiniLM-L6-v2", caches[i]);
		if (has_model_file(buf))
			return buf;
	}
	return NULL;
}

/*
 * Why the real model must be present, or NULL when its absence may skip
 * the tests that need it: in CI (CI=true), when PEFT_MODEL_DIR names a
 * folder, or once scripts/fetch_model has run here (its cache folder
 * exists).  Thirteen reference tests used to vanish silently as skips.
 */
static inline const char *
real_model_expected(void)
{
	static char why[4096 + 64];
	const char *ci = getenv("CI");
	const char *env = getenv("PEFT_MODEL_DIR");
	char		caches[3][1024];
	int			n = fetch_model_caches(caches);
	struct stat st;

	if (ci && strcmp(ci, "true") == 0)
		return "CI=true";
	if (env && *env)
	{
		snprintf(why, sizeof(why), "PEFT_MODEL_DIR=%s", env);
		return why;
	}
	for (int i = 0; i < n; i++)
		if (stat(caches[i], &st) == 0 && S_ISDIR(st.st_mode))
		{
			snprintf(why, sizeof(why), "scripts/fetch_model's cache %s exists", caches[i]);
			return why;
		}
	return NULL;
}

/*
 * Call first in every test that needs the real model, with whether it is
 * there (loaded): skip when it is absent and not expected, fail when it is
 * expected (real_model_expected).
 */
static inline void
require_real_model(bool present)
{
	const char *why;

	if (present)
		return;
	why = real_model_expected();
	fflush(stdout);
	if (why != NULL)
		fail_msg("the real model all-MiniLM-L6-v2 is missing although %s: "
				 "run scripts/fetch_model or point PEFT_MODEL_DIR at it", why);
	print_message("real model absent (no PEFT_MODEL_DIR, no fetch_model cache): skipped\n");
	skip();
}

/*
 * Path of the real decoder, SmolLM2-135M-Instruct Q4_1 GGUF, or NULL when it
 * is absent: $PEFT_DECODER_GGUF when set, else the first fetch_model cache
 * that has it (scripts/fetch_model fetches it beside the encoder).
 */
static inline const char *
real_decoder_gguf(void)
{
	static char buf[4096];
	const char *env = getenv("PEFT_DECODER_GGUF");
	char		caches[3][1024];
	struct stat st;
	int			n;

	if (env && *env)
		return stat(env, &st) == 0 ? env : NULL;
	n = fetch_model_caches(caches);
	for (int i = 0; i < n; i++)
	{
		snprintf(buf, sizeof(buf), "%s/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf", caches[i]);
		if (stat(buf, &st) == 0)
			return buf;
	}
	return NULL;
}

/*
 * Call first in every test that needs the real decoder, with whether it is
 * there: skip when absent and not expected, fail when expected (as
 * require_real_model: CI, a set variable, or a fetch_model cache).
 */
static inline void
require_real_decoder(bool present)
{
	const char *why;

	if (present)
		return;
	why = getenv("PEFT_DECODER_GGUF") && *getenv("PEFT_DECODER_GGUF") ?
		"PEFT_DECODER_GGUF is set" : real_model_expected();
	fflush(stdout);
	if (why != NULL)
		fail_msg("the real decoder SmolLM2-135M-Instruct.Q4_1.gguf is missing although %s: "
				 "run scripts/fetch_model or point PEFT_DECODER_GGUF at it", why);
	print_message("real decoder absent (no PEFT_DECODER_GGUF, no fetch_model cache): skipped\n");
	skip();
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
