/*
 * test_chat_template.c - chat templates rendered in C against Hugging Face
 * transformers' apply_chat_template (test/fixtures/ref_chat.py wrote
 * test/fixtures/reference/chat/renders.json from the published SmolLM2,
 * Qwen2.5, OpenHermes ChatML and Llama 3 templates): every fixture
 * conversation with and without the generation prompt, byte for byte; the
 * rewritten templates Jinja renders the same (recognised) and the
 * near-misses (refused); the template inside the real SmolLM2 GGUF; and the
 * argument checks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "chat_template.h"
#include "gguf.h"
#include "model_config.h"
#include "test_util.h"

#define CHAT_DIR "test/fixtures/reference/chat/"

/* renders.json, parsed once (freed at exit). */
static cJSON *chat_doc;

/* The parsed renders.json. */
static cJSON *
fixture(void)
{
	if (chat_doc == NULL)
		chat_doc = load_json_file(source_path(CHAT_DIR "renders.json"));
	assert_non_null(chat_doc);
	return chat_doc;
}

/* A template file of the fixture folder as a NUL-terminated string; free it. */
static char *
template_file(const char *name)
{
	char		rel[256];
	char	   *text;
	size_t		len;
	PeftError	err = {0};

	snprintf(rel, sizeof(rel), CHAT_DIR "%s", name);
	assert_int_equal(read_small_file(source_path(rel), 1 << 20, &text, &len, &err), PEFT_OK);
	return text;
}

/* The messages of the fixture conversation named name (contents borrowed from the JSON); returns the count. */
static int
conversation(const char *name, ChatMessage *msgs, int cap)
{
	cJSON	   *conv;

	cJSON_ArrayForEach(conv, cJSON_GetObjectItem(fixture(), "conversations"))
	{
		cJSON	   *m;
		int			n = 0;

		if (strcmp(cJSON_GetObjectItem(conv, "name")->valuestring, name) != 0)
			continue;
		cJSON_ArrayForEach(m, cJSON_GetObjectItem(conv, "messages"))
		{
			PeftError	err = {0};

			assert_true(n < cap);
			assert_int_equal(chat_role_parse(cJSON_GetObjectItem(m, "role")->valuestring, &msgs[n].role, &err),
							 PEFT_OK);
			msgs[n].content = cJSON_GetObjectItem(m, "content")->valuestring;
			n++;
		}
		return n;
	}
	fail_msg("no fixture conversation %s", name);
	return 0;
}

/* Render a fixture conversation with t; free the result. */
static char *
render(const ChatTemplate *t, const char *conv, bool gen)
{
	ChatMessage msgs[16];
	int			n = conversation(conv, msgs, 16);
	char	   *out = NULL;
	PeftError	err = {0};

	if (chat_template_render(t, msgs, n, gen, &out, &err) != PEFT_OK)
		fail_msg("rendering %s: %s", conv, err.message);
	return out;
}

/* Every fixture render of the template labelled label matches t's, byte for byte; returns how many. */
static int
check_renders(const ChatTemplate *t, const char *label)
{
	cJSON	   *r;
	int			checked = 0;

	cJSON_ArrayForEach(r, cJSON_GetObjectItem(fixture(), "renders"))
	{
		const char *conv = cJSON_GetObjectItem(r, "conversation")->valuestring;
		bool		gen = cJSON_IsTrue(cJSON_GetObjectItem(r, "add_generation_prompt"));
		char	   *got;

		if (strcmp(cJSON_GetObjectItem(r, "template")->valuestring, label) != 0)
			continue;
		got = render(t, conv, gen);
		if (strcmp(got, cJSON_GetObjectItem(r, "text")->valuestring) != 0)
			fail_msg("%s, %s, generation prompt %d:\n got: %s\nwant: %s", label, conv, gen, got,
					 cJSON_GetObjectItem(r, "text")->valuestring);
		free(got);
		checked++;
	}
	return checked;
}

/* Each published template is recognised as its family with its stop text and default system prompt, and renders as transformers does. */
static void
test_published_templates(void **state)
{
	cJSON	   *spec;
	int			templates = 0,
				renders = 0;

	cJSON_ArrayForEach(spec, cJSON_GetObjectItem(fixture(), "templates"))
	{
		const char *file = cJSON_GetObjectItem(spec, "file")->valuestring;
		cJSON	   *bos = cJSON_GetObjectItem(spec, "bos_token");
		cJSON	   *def = cJSON_GetObjectItem(spec, "default_system");
		char	   *text = template_file(file);
		ChatTemplate t;
		PeftError	err = {0};
		int			n;

		if (chat_template_detect(text, cJSON_IsString(bos) ? bos->valuestring : NULL, &t, &err) != PEFT_OK)
			fail_msg("%s: %s", file, err.message);
		assert_string_equal(chat_template_kind_name(t.kind), cJSON_GetObjectItem(spec, "family")->valuestring);
		assert_string_equal(t.stop, cJSON_GetObjectItem(spec, "stop")->valuestring);
		assert_non_null(t.name);
		if (cJSON_IsString(def))
			assert_string_equal(t.default_system, def->valuestring);
		else
			assert_null(t.default_system);
		if (t.kind == CHAT_TEMPLATE_LLAMA3)
			assert_string_equal(t.bos, "<|begin_of_text|>");
		else
			assert_null(t.bos);
		n = check_renders(&t, file);
		print_message("%-26s %-7s %2d renders  (%s)\n", file, chat_template_kind_name(t.kind), n, t.name);
		assert_int_equal(n, 2 * cJSON_GetArraySize(cJSON_GetObjectItem(fixture(), "conversations")));
		renders += n;
		templates++;
		chat_template_free(&t);
		free(text);
	}
	assert_int_equal(templates, 4);
	assert_true(renders >= 4 * 2 * 12);
}

/* Rewritten templates Jinja renders the same are recognised (and render as the original); near-misses are refused. */
static void
test_variants(void **state)
{
	cJSON	   *v;
	int			recognised = 0,
				refused = 0;

	cJSON_ArrayForEach(v, cJSON_GetObjectItem(fixture(), "variants"))
	{
		const char *name = cJSON_GetObjectItem(v, "name")->valuestring;
		cJSON	   *expect = cJSON_GetObjectItem(v, "expect");
		cJSON	   *same_as = cJSON_GetObjectItem(v, "same_as");
		ChatTemplate t;
		PeftError	err = {0};
		PeftCode	rc = chat_template_detect(cJSON_GetObjectItem(v, "text")->valuestring, NULL, &t, &err);

		if (!cJSON_IsString(expect))
		{
			if (rc != PEFT_ERR_INVALID)
				fail_msg("variant %s was taken for %s", name, t.name);
			assert_int_equal(t.kind, CHAT_TEMPLATE_RAW);
			assert_null(t.default_system);
			assert_non_null(strstr(err.message, "raw prompt"));
			print_message("refused    %-28s %s\n", name, err.message);
			refused++;
			continue;
		}
		if (rc != PEFT_OK)
			fail_msg("variant %s: %s", name, err.message);
		assert_string_equal(chat_template_kind_name(t.kind), expect->valuestring);
		/* the same renders as the template it rewrites, or its own recorded ones */
		assert_int_equal(check_renders(&t, cJSON_IsString(same_as) ? same_as->valuestring : name),
						 2 * cJSON_GetArraySize(cJSON_GetObjectItem(fixture(), "conversations")));
		print_message("recognised %-28s as %s\n", name, t.name);
		recognised++;
		chat_template_free(&t);
	}
	assert_true(recognised >= 8);
	assert_true(refused >= 8);
}

/* The default system prompt comes out of the template's string literal decoded (\' and \\ are Jinja escapes). */
static void
test_default_decoded(void **state)
{
	const char *text = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
		"{{ '<|im_start|>system\\nIt\\'s a \\\\ \"test\"\\t\\n<|im_end|>\\n' }}{% endif %}"
		"{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
		"{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
	ChatTemplate t;
	PeftError	err = {0};

	assert_int_equal(chat_template_detect(text, NULL, &t, &err), PEFT_OK);
	assert_string_equal(t.default_system, "It's a \\ \"test\"\t\n");
	chat_template_free(&t);
	/* an empty default is still one */
	text = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
		"{{ '<|im_start|>system\\n<|im_end|>\\n' }}{% endif %}"
		"{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
		"{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
	assert_int_equal(chat_template_detect(text, NULL, &t, &err), PEFT_OK);
	assert_string_equal(t.default_system, "");
	chat_template_free(&t);
}

/* The template inside the real SmolLM2 GGUF: the published one, ChatML ending turns with the model's EOS text. */
static void
test_real_gguf(void **state)
{
	const char *path = real_decoder_gguf();
	GgufFile   *f = NULL;
	char	   *jinja = NULL;
	char	   *file = template_file("smollm2_instruct.jinja");
	const GgufValue *tokens;
	uint64_t	eos = 0;
	const uint8_t *p;
	ChatTemplate t;
	PeftError	err = {0};

	require_real_decoder(path != NULL);
	assert_int_equal(gguf_open_file(path, &f, &err), PEFT_OK);
	assert_int_equal(gguf_get_string(f, "tokenizer.chat_template", &jinja, &err), PEFT_OK);
	assert_string_equal(jinja, file);
	assert_int_equal(chat_template_detect(jinja, NULL, &t, &err), PEFT_OK);
	assert_int_equal(t.kind, CHAT_TEMPLATE_CHATML);
	assert_string_equal(t.default_system, "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
	assert_int_equal(check_renders(&t, "smollm2_instruct.jinja"),
					 2 * cJSON_GetArraySize(cJSON_GetObjectItem(fixture(), "conversations")));

	/* the stop text is the model's EOS token: tokenizer.ggml.tokens[eos_token_id] */
	assert_int_equal(gguf_get_uint(f, "tokenizer.ggml.eos_token_id", &eos, &err), PEFT_OK);
	tokens = gguf_find(f, "tokenizer.ggml.tokens");
	assert_non_null(tokens);
	assert_int_equal(tokens->type, GGUF_ARRAY);
	assert_int_equal(tokens->elem_type, GGUF_STRING);
	assert_true(eos < tokens->count);
	p = tokens->elems;
	for (uint64_t k = 0; k < eos; k++)
	{
		uint64_t	len;

		memcpy(&len, p, 8);
		p += 8 + len;
	}
	{
		uint64_t	len;

		memcpy(&len, p, 8);
		assert_int_equal(len, strlen(t.stop));
		assert_memory_equal(p + 8, t.stop, len);
	}
	chat_template_free(&t);
	free(jinja);
	free(file);
	gguf_close(f);
}

/* Every prefix of Qwen2.5's template is refused (but the one without its final newline), never read past. */
static void
test_prefixes(void **state)
{
	char	   *text = template_file("qwen2.5_instruct.jinja");
	size_t		len = strlen(text);
	int			accepted = 0;

	for (size_t n = 0; n <= len; n++)
	{
		char	   *copy = strndup(text, n);
		ChatTemplate t;
		PeftError	err = {0};
		PeftCode	rc = chat_template_detect(copy, NULL, &t, &err);

		if (rc == PEFT_OK)
		{
			accepted++;
			assert_true(n == len || (n == len - 1 && text[len - 1] == '\n'));
			chat_template_free(&t);
		}
		else
		{
			assert_int_equal(rc, PEFT_ERR_INVALID);
			assert_true(err.message[0] != '\0');
		}
		free(copy);
	}
	assert_int_equal(accepted, 2);
	free(text);
}

/* Jinja that peft does not read is refused with the reason, not guessed at. */
static void
test_unreadable_jinja(void **state)
{
	static const struct
	{
		const char *text;
		const char *why;
	}			cases[] = {
		{"{{ 'unterminated }}", "unterminated string"},
		{"{{ 1.5 }}", "number"},
		{"{{ 0x1f }}", "number"},
		{"{{ '\\x41' }}", "escape"},
		{"{{ '\\u00e9' }}", "escape"},
		{"{% if x %}", "closest"},
		{"{{ x ", "unclosed tag"},
		{"{# never closed", "unclosed comment"},
		{"{{ (x] }}", "unbalanced"},
		{"{{ caf\xc3\xa9 }}", "non-ASCII"},
		{"{{ x ? y }}", "character"},
		{"{% raw %}{{ x }}{% endraw %}", "raw block"},
		{"plain text, no tags", "closest"},
	};
	ChatTemplate t;

	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++)
	{
		PeftError	err = {0};

		assert_int_equal(chat_template_detect(cases[k].text, NULL, &t, &err), PEFT_ERR_INVALID);
		if (strstr(err.message, cases[k].why) == NULL)
			fail_msg("\"%s\": \"%s\" does not say %s", cases[k].text, err.message, cases[k].why);
	}
}

/* Bad arguments are refused with PEFT_ERR_INVALID and a message; nothing is returned. */
static void
test_errors(void **state)
{
	char	   *llama = template_file("llama3_instruct.jinja");
	char	   *big;
	ChatTemplate t,
				raw;
	ChatMessage msgs[3] = {{CHAT_ROLE_USER, "hi"}, {CHAT_ROLE_ASSISTANT, "yo"}, {CHAT_ROLE_USER, "x"}};
	ChatRole	role;
	char	   *out = (char *) 1;
	char		long_bos[CHAT_TEMPLATE_MAX_TOKEN_TEXT + 2];
	PeftError	err = {0};

	assert_int_equal(chat_template_detect(NULL, NULL, &t, &err), PEFT_ERR_INVALID);
	assert_non_null(strstr(err.message, "no chat template"));
	assert_int_equal(chat_template_detect("{{ '\xff' }}", NULL, &t, &err), PEFT_ERR_INVALID);
	assert_non_null(strstr(err.message, "UTF-8"));
	big = malloc(CHAT_TEMPLATE_MAX_TEXT + 2);
	memset(big, 'a', CHAT_TEMPLATE_MAX_TEXT + 1);
	big[CHAT_TEMPLATE_MAX_TEXT + 1] = '\0';
	assert_int_equal(chat_template_detect(big, NULL, &t, &err), PEFT_ERR_INVALID);
	assert_non_null(strstr(err.message, "longer than"));
	free(big);
	memset(long_bos, 'b', sizeof(long_bos) - 1);
	long_bos[sizeof(long_bos) - 1] = '\0';
	assert_int_equal(chat_template_detect(llama, long_bos, &t, &err), PEFT_ERR_INVALID);
	assert_int_equal(chat_template_detect(llama, "\xc0\x80", &t, &err), PEFT_ERR_INVALID);
	/* an unknown template names its start and the closest known one */
	assert_int_equal(chat_template_detect("{{ bos_token }}{% for message in messages %}[INST] {{ message['content'] }}"
										  "{% endfor %}", NULL, &t, &err), PEFT_ERR_INVALID);
	assert_non_null(strstr(err.message, "{{ bos_token }}"));
	assert_non_null(strstr(err.message, "closest"));

	/* the tokenizer's own BOS text goes first in Llama 3 */
	assert_int_equal(chat_template_detect(llama, "<s>", &t, &err), PEFT_OK);
	assert_int_equal(chat_template_render(&t, msgs, 1, false, &out, &err), PEFT_OK);
	assert_string_equal(out, "<s><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>");
	free(out);

	assert_int_equal(chat_template_render(&t, msgs, 0, true, &out, &err), PEFT_ERR_INVALID);
	assert_null(out);
	assert_int_equal(chat_template_render(&t, NULL, 1, true, &out, &err), PEFT_ERR_INVALID);
	assert_int_equal(chat_template_render(&t, msgs, CHAT_TEMPLATE_MAX_MESSAGES + 1, true, &out, &err),
					 PEFT_ERR_INVALID);
	msgs[1].content = NULL;
	assert_int_equal(chat_template_render(&t, msgs, 3, true, &out, &err), PEFT_ERR_INVALID);
	assert_non_null(strstr(err.message, "message 2"));
	msgs[1].content = "bad \xed\xa0\x80 surrogate";
	assert_int_equal(chat_template_render(&t, msgs, 3, true, &out, &err), PEFT_ERR_INVALID);
	assert_non_null(strstr(err.message, "UTF-8"));
	msgs[1].content = "yo";
	msgs[2].role = (ChatRole) 7;
	assert_int_equal(chat_template_render(&t, msgs, 3, true, &out, &err), PEFT_ERR_INVALID);
	assert_non_null(strstr(err.message, "role"));
	msgs[2].role = CHAT_ROLE_USER;
	assert_int_equal(chat_template_render(NULL, msgs, 3, true, &out, &err), PEFT_ERR_INVALID);
	assert_null(out);
	chat_template_free(&t);
	/* a freed template renders nothing */
	assert_int_equal(chat_template_render(&t, msgs, 3, true, &out, &err), PEFT_ERR_INVALID);
	chat_template_free(&t);
	chat_template_free(NULL);

	/* raw: one user message, as it is */
	chat_template_raw(&raw);
	assert_int_equal(raw.kind, CHAT_TEMPLATE_RAW);
	assert_null(raw.stop);
	msgs[0].content = "  <|im_start|>as it is\n";
	assert_int_equal(chat_template_render(&raw, msgs, 1, true, &out, &err), PEFT_OK);
	assert_string_equal(out, "  <|im_start|>as it is\n");
	free(out);
	assert_int_equal(chat_template_render(&raw, msgs, 2, true, &out, &err), PEFT_ERR_INVALID);
	assert_non_null(strstr(err.message, "raw prompt"));
	msgs[0].role = CHAT_ROLE_SYSTEM;
	assert_int_equal(chat_template_render(&raw, msgs, 1, false, &out, &err), PEFT_ERR_INVALID);
	chat_template_free(&raw);

	assert_int_equal(chat_role_parse("assistant", &role, &err), PEFT_OK);
	assert_int_equal(role, CHAT_ROLE_ASSISTANT);
	assert_int_equal(chat_role_parse("tool", &role, &err), PEFT_ERR_INVALID);
	assert_non_null(strstr(err.message, "\"tool\""));
	assert_int_equal(chat_role_parse("User", &role, &err), PEFT_ERR_INVALID);
	assert_int_equal(chat_role_parse(NULL, &role, &err), PEFT_ERR_INVALID);
	assert_string_equal(chat_role_name((ChatRole) 9), "unknown");
	assert_string_equal(chat_template_kind_name((ChatTemplateKind) 9), "unknown");
	free(llama);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_published_templates),
		cmocka_unit_test(test_variants),
		cmocka_unit_test(test_default_decoded),
		cmocka_unit_test(test_real_gguf),
		cmocka_unit_test(test_prefixes),
		cmocka_unit_test(test_unreadable_jinja),
		cmocka_unit_test(test_errors),
	};
	int			rc = cmocka_run_group_tests(tests, NULL, NULL);

	cJSON_Delete(chat_doc);
	return rc;
}
