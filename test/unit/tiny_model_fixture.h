/*
 * tiny_model_fixture.h - a cmocka group fixture shared by the tests that
 * run the tiny generated BERT: tiny_setup() loads it into `model`,
 * tiny_teardown() frees it.  Include once, after cmocka.h and test_util.h.
 */
#ifndef PEFT_TINY_MODEL_FIXTURE_H
#define PEFT_TINY_MODEL_FIXTURE_H

#include "bert.h"
#include "test_util.h"

static BertModel *model;

/* Load the tiny model (generated on first use). */
static int
tiny_setup(void **state)
{
	const char *dir = tiny_model_dir();
	PeftError	err = {0};

	if (dir == NULL || bert_load(dir, &model, &err) != PEFT_OK)
	{
		fprintf(stderr, "cannot load the tiny model: %s\n", err.message);
		return -1;
	}
	return 0;
}

/* Free the model. */
static int
tiny_teardown(void **state)
{
	bert_free(model);
	return 0;
}

#endif
