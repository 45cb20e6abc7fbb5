/*
 * words.h - the words users write for the engine's enumerations, in one
 * place: the index of a word is its enum value in engine_api.h.  Static
 * arrays in a header, because peft.so needs them for its settings before
 * the engine library is loaded (and must not load it in the postmaster);
 * the engine's option table uses the same arrays.
 */
#ifndef PEFT_WORDS_H
#define PEFT_WORDS_H

#include <stddef.h>
#include <string.h>

/* PeftDevice */
static const char *const peft_device_words[] = {"auto", "cpu", "cuda", NULL};
/* PeftPrecision */
static const char *const peft_precision_words[] = {"fp32", "tf32", "bf16", NULL};
/* PeftSchedule (Hugging Face's lr_scheduler_type) */
static const char *const peft_schedule_words[] = {"linear", "cosine", "constant", NULL};
/* PeftTask */
static const char *const peft_task_words[] = {"classification", "regression", "generation", NULL};
/* PeftAdapterPlacement */
static const char *const peft_placement_words[] = {"pfeiffer", "houlsby", NULL};

/* Index of word in the NULL-terminated list words, or -1. */
static inline int
peft_word_index(const char *const *words, const char *word)
{
	for (int i = 0; words[i] != NULL; i++)
		if (strcmp(words[i], word) == 0)
			return i;
	return -1;
}

#endif
