/*
 * fuzz_common.h - helpers shared by the libFuzzer harnesses in test/fuzz/:
 * where the tiny test model is, copies of the input that end at an
 * inaccessible page, the length prefixes, and invariant checks.  Each
 * harness includes it once.
 */
#ifndef PEFT_FUZZ_COMMON_H
#define PEFT_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sanitizer/asan_interface.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef PEFT_SOURCE_DIR
#define PEFT_SOURCE_DIR "."
#endif

/* Path of the temporary model folder this process generated, or "". */
static char fuzz_generated_dir[256];

/* Remove the generated model folder at exit (only the one this process made). */
static inline void
fuzz_remove_generated(void)
{
	char		cmd[512];

	if (fuzz_generated_dir[0] == '\0')
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fuzz_generated_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "fuzz: could not remove %s\n", fuzz_generated_dir);
}

/*
 * Folder of the tiny BERT: $PEFT_TINY_MODEL_DIR when it holds a model, else
 * generated once per process by test/fixtures/make_tiny_model.py into a
 * temporary folder removed at exit.  Exits the process when neither works.
 */
static inline const char *
fuzz_tiny_model_dir(void)
{
	static char dir[4096];
	char		probe[4096 + 32];
	char		cmd[4096 + 512];
	const char *env = getenv("PEFT_TINY_MODEL_DIR");
	struct stat st;

	if (dir[0])
		return dir;
	if (env && *env)
	{
		snprintf(probe, sizeof(probe), "%s/model.safetensors", env);
		if (stat(probe, &st) == 0)
		{
			snprintf(dir, sizeof(dir), "%s", env);
			return dir;
		}
	}
	snprintf(fuzz_generated_dir, sizeof(fuzz_generated_dir), "/tmp/peft-fuzz-tiny-XXXXXX");
	if (mkdtemp(fuzz_generated_dir) == NULL)
	{
		perror("fuzz: mkdtemp");
		exit(1);
	}
	atexit(fuzz_remove_generated);
	snprintf(dir, sizeof(dir), "%s/model", fuzz_generated_dir);
	snprintf(cmd, sizeof(cmd),
			 "python3 '%s/test/fixtures/make_tiny_model.py' '%s' >/dev/null",
			 PEFT_SOURCE_DIR, dir);
	if (system(cmd) != 0)
	{
		fprintf(stderr, "fuzz: could not generate the tiny model (%s)\n", cmd);
		exit(1);
	}
	return dir;
}

#define FUZZ_GUARDED_SLOTS 2

/*
 * A copy of data[0..len) that ends exactly where an inaccessible page
 * begins, so that reading even one byte past it faults.  AddressSanitizer
 * sees over-reads only in instrumented code; this also catches them in the
 * system libraries the engine calls (cJSON parsing a text that does not
 * end in a NUL).  The bytes before the copy are poisoned for ASan, so
 * under-reads are still reported.  Each slot (0 or 1) is reused: the copy
 * is valid until the next call with the same slot.
 */
static inline const uint8_t *
fuzz_guarded_copy(int slot, const uint8_t *data, size_t len)
{
	static uint8_t *region[FUZZ_GUARDED_SLOTS];
	static size_t region_size[FUZZ_GUARDED_SLOTS];	/* bytes before the guard page */
	size_t		page = (size_t) sysconf(_SC_PAGESIZE);
	uint8_t    *copy;

	if (region[slot] == NULL || len > region_size[slot])
	{
		size_t		size = (len + page - 1) / page * page;

		if (size == 0)
			size = page;
		if (region[slot] != NULL)
		{
			ASAN_UNPOISON_MEMORY_REGION(region[slot], region_size[slot]);
			munmap(region[slot], region_size[slot] + page);
		}
		region[slot] = mmap(NULL, size + page, PROT_READ | PROT_WRITE,
							MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (region[slot] == MAP_FAILED ||
			mprotect(region[slot] + size, page, PROT_NONE) != 0)
		{
			perror("fuzz: guard page");
			abort();
		}
		region_size[slot] = size;
	}
	copy = region[slot] + region_size[slot] - len;
	ASAN_UNPOISON_MEMORY_REGION(region[slot], region_size[slot]);
	if (len > 0)
		memcpy(copy, data, len);
	ASAN_POISON_MEMORY_REGION(region[slot], region_size[slot] - len);
	return copy;
}

/* Little-endian 16-bit value at p (the harnesses' length prefixes). */
static inline size_t
fuzz_le16(const uint8_t *p)
{
	return (size_t) p[0] | ((size_t) p[1] << 8);
}

/* Abort with a message: a broken invariant is a finding like a crash. */
#define FUZZ_CHECK(cond) \
	do { \
		if (!(cond)) \
		{ \
			fprintf(stderr, "fuzz: check failed at %s:%d: %s\n", \
					__FILE__, __LINE__, #cond); \
			abort(); \
		} \
	} while (0)

#endif
