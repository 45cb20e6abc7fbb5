/*
 * test_options.c - the training option table (src/engine/training/train_config.c)
 * checked row by row, so that a new option is covered without editing
 * this file: its default is what train_config_default stores, a value of
 * the wrong kind and one out of range are refused with an error naming the
 * option, the ends of its range are accepted and stored, text (a command
 * line's) parses to the same value, and the README's options table has
 * its row (key, default and help), as `peft-engine options` prints it.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "model_config.h"
#include "test_util.h"
#include "train_config.h"

/* The number an option's field holds, whatever its C type (TEXT: 1 when set). */
static double
stored(const PeftTrainConfig *c, const PeftOption *o)
{
	const char *at = (const char *) c + o->offset;

	if (o->type == PEFT_OPTION_TEXT)
		return *(const char *const *) at != NULL;
	if (o->type == PEFT_OPTION_MODULES)
		return *(const int *) ((const char *) c + o->count_offset);
	if (o->type == PEFT_OPTION_NUMBER)
		return *(const double *) at;
	if (o->type == PEFT_OPTION_BOOL)
		return *(const bool *) at;
	if (o->size == sizeof(uint64_t))
		return (double) *(const uint64_t *) at;
	return *(const int *) at;
}

/* Setting v for o must fail, with an error that names the option. */
static void
refused(const PeftOption *o, const PeftOptionValue *v, const char *why)
{
	PeftTrainConfig c;
	PeftError	err = {0};

	train_config_default(&c);
	if (train_config_set(&c, o->key, v, &err) == PEFT_OK)
		fail_msg("option %s accepted %s", o->key, why);
	if (strstr(err.message, o->key) == NULL)
		fail_msg("option %s: the error \"%s\" does not name it", o->key, err.message);
}

/* Every default is what train_config_default stores. */
static void
test_defaults(void **state)
{
	PeftTrainConfig c;
	int			count;
	const PeftOption *options = train_config_options(&count);

	train_config_default(&c);
	assert_true(count >= 20);
	for (int i = 0; i < count; i++)
		if (stored(&c, &options[i]) != options[i].default_value)
			fail_msg("option %s: default %g, train_config_default stores %g", options[i].key,
					 options[i].default_value, stored(&c, &options[i]));
}

/* Values of the wrong kind are refused, naming the option. */
static void
test_wrong_kinds(void **state)
{
	int			count;
	const PeftOption *options = train_config_options(&count);
	const char *const names[] = {"query"};

	for (int i = 0; i < count; i++)
	{
		const PeftOption *o = &options[i];
		PeftOptionValue number = {.type = PEFT_OPTION_NUMBER, .number = 1};
		PeftOptionValue boolean = {.type = PEFT_OPTION_BOOL, .boolean = true};
		PeftOptionValue word = {.type = PEFT_OPTION_WORD, .word = "no-such-word"};
		PeftOptionValue list = {.type = PEFT_OPTION_MODULES, .names = names, .nnames = 1};
		PeftOptionValue none = {.type = PEFT_OPTION_NONE};

		refused(o, &none, "null");
		if (o->type != PEFT_OPTION_INT && o->type != PEFT_OPTION_NUMBER)
			refused(o, &number, "a number");
		if (o->type != PEFT_OPTION_BOOL)
			refused(o, &boolean, "a boolean");
		if (o->type == PEFT_OPTION_TEXT)
		{
			/* any string but one of blanks and semicolons (a query or a file name) */
			word.word = " ;\n";
			refused(o, &word, "an empty string");
		}
		else
			refused(o, &word, "an unknown word");
		if (o->type != PEFT_OPTION_MODULES)
			refused(o, &list, "a list");
	}
}

/* Numbers: the ends of the range are stored, beyond them refused, NaN and fractions too. */
static void
test_ranges(void **state)
{
	int			count;
	const PeftOption *options = train_config_options(&count);

	for (int i = 0; i < count; i++)
	{
		const PeftOption *o = &options[i];
		PeftTrainConfig c;
		PeftError	err = {0};
		PeftOptionValue v = {.type = PEFT_OPTION_NUMBER};
		double		step = o->type == PEFT_OPTION_INT ? 1 : fmax(fabs(o->max) * 1e-6, 1e-12);

		if (o->type != PEFT_OPTION_INT && o->type != PEFT_OPTION_NUMBER)
			continue;
		train_config_default(&c);
		v.number = o->min;
		if (train_config_set(&c, o->key, &v, &err) != PEFT_OK || stored(&c, o) != o->min)
			fail_msg("option %s refused its minimum %g: %s", o->key, o->min, err.message);
		v.number = o->max_open ? o->max - step : o->max;
		if (train_config_set(&c, o->key, &v, &err) != PEFT_OK || stored(&c, o) != v.number)
			fail_msg("option %s refused %g: %s", o->key, v.number, err.message);
		v.number = o->min - step;
		refused(o, &v, "a number below its range");
		v.number = o->max + (o->max_open ? 0 : step);
		refused(o, &v, "a number above its range");
		v.number = NAN;
		refused(o, &v, "NaN");
		if (o->type == PEFT_OPTION_INT)
		{
			v.number = o->min + 0.5;
			refused(o, &v, "a fraction");
		}
	}
}

/* Text parses to what the typed value gives: the default of each option, written out. */
static void
test_text(void **state)
{
	int			count;
	const PeftOption *options = train_config_options(&count);

	for (int i = 0; i < count; i++)
	{
		const PeftOption *o = &options[i];
		PeftTrainConfig c;
		PeftError	err = {0};
		char		text[64];

		train_config_default(&c);
		if (o->type == PEFT_OPTION_MODULES)
			snprintf(text, sizeof(text), "query,value");
		else if (o->type == PEFT_OPTION_TEXT)
			snprintf(text, sizeof(text), "held-out.tsv");
		else if (o->type == PEFT_OPTION_WORD)
			snprintf(text, sizeof(text), "%s", o->words[1] ? o->words[1] : o->words[0]);
		else if (o->type == PEFT_OPTION_BOOL)
			snprintf(text, sizeof(text), "%s", o->default_value ? "false" : "true");
		else
			snprintf(text, sizeof(text), "%.17g", o->max_open ? (o->min + o->max) / 2 : o->max);
		if (train_config_parse(&c, o->key, text, &err) != PEFT_OK)
			fail_msg("option %s: \"%s\" refused: %s", o->key, text, err.message);
		if (o->type == PEFT_OPTION_MODULES)
			assert_int_equal(stored(&c, o), 2);
		else if (o->type == PEFT_OPTION_TEXT)
			assert_string_equal(*(const char *const *) ((const char *) &c + o->offset), text);
		else if (o->type == PEFT_OPTION_WORD)
			assert_true(stored(&c, o) == (o->words[1] ? 1 : 0));
		else if (o->type == PEFT_OPTION_BOOL)
			assert_true(stored(&c, o) == !o->default_value);
		else
			assert_true(stored(&c, o) == strtod(text, NULL));
	}
}

/* The README's text (exits the test on failure); free it. */
static char *
read_readme(void)
{
	char	   *readme = NULL;
	size_t		len = 0;
	PeftError	err = {0};

	assert_int_equal(read_small_file(source_path("README.md"), 1 << 22, &readme, &len, &err), PEFT_OK);
	return readme;
}

/* The README's options table has a row for every option: key, default and help. */
static void
test_readme_rows(void **state)
{
	int			count;
	const PeftOption *options = train_config_options(&count);
	char	   *readme = read_readme();

	for (int i = 0; i < count; i++)
	{
		char		row[1024];

		snprintf(row, sizeof(row), "\n| `%s` | %s | %s |\n", options[i].key, options[i].default_text,
				 options[i].help);
		if (strstr(readme, row) == NULL)
			fail_msg("README.md has no options row \"%s\"", row + 1);
	}
	free(readme);
}

/* `peft-engine options` prints the README's options table, as it stands there (skipped unbuilt, outside CI). */
static void
test_cli_options(void **state)
{
	char		command[4200];
	char		out[1 << 16];
	size_t		len;
	FILE	   *p;
	char	   *readme;

	snprintf(command, sizeof(command), "%s options", source_path("peft-engine"));
	if (access(source_path("peft-engine"), X_OK) != 0)
	{
		/* in CI the build made it: its absence is a failure there */
		if (getenv("CI") && strcmp(getenv("CI"), "true") == 0)
			fail_msg("CI=true but %s is not built", source_path("peft-engine"));
		skip();
	}
	assert_non_null(p = popen(command, "r"));
	len = fread(out, 1, sizeof(out) - 1, p);
	assert_int_equal(pclose(p), 0);
	out[len] = '\0';
	assert_true(len > 0 && len < sizeof(out) - 1);
	readme = read_readme();
	if (strstr(readme, out) == NULL)
		fail_msg("README.md lacks the table `peft-engine options` prints:\n%s", out);
	free(readme);
}

/* An unknown key is refused. */
static void
test_unknown(void **state)
{
	PeftTrainConfig c;
	PeftError	err = {0};
	PeftOptionValue v = {.type = PEFT_OPTION_NUMBER, .number = 8};

	train_config_default(&c);
	assert_int_equal(train_config_set(&c, "rank", &v, &err), PEFT_ERR_INVALID);
	assert_non_null(strstr(err.message, "unknown option \"rank\""));
	assert_int_equal(train_config_parse(&c, "rank", "8", &err), PEFT_ERR_INVALID);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_wrong_kinds),
		cmocka_unit_test(test_ranges),
		cmocka_unit_test(test_text),
		cmocka_unit_test(test_readme_rows),
		cmocka_unit_test(test_cli_options),
		cmocka_unit_test(test_unknown),
	};

	return cmocka_run_group_tests_name("training options (the option table)", tests, NULL, NULL);
}
