/*
 * chat_template.c - recognise a model's Jinja chat template as one peft
 * knows and render conversations with it in C.
 *
 * Recognition lexes the template the way Jinja 3 does under transformers'
 * settings (trim_blocks, lstrip_blocks) into tokens: output text after
 * whitespace control, tag delimiters, names, decoded string literals,
 * integers, operators.  Two templates with the same tokens render the
 * same, so the model's template is compared with each known one token by
 * token; a known one may leave a hole in one string literal (the default
 * system prompt), whose text is taken from the model's template.  What the
 * lexer is unsure of (raw blocks, floats, rare escapes, non-ASCII outside
 * strings) makes the template unknown rather than guessed at.
 */
#include "chat_template.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Marks the hole in a known template's string literal. */
#define HOLE '\001'
#define LLAMA3_BOS "<|begin_of_text|>"

/*
 * The known templates, as published (Jinja formatting aside: the lexer
 * makes it irrelevant), with \001 where the default system prompt goes.
 */

/* HuggingFaceTB/SmolLM2-*-Instruct and Qwen/Qwen2-*-Instruct. */
static const char chatml_default_text[] =
	"{% for message in messages %}"
	"{% if loop.first and messages[0]['role'] != 'system' %}"
	"{{ '<|im_start|>system\\n\001<|im_end|>\\n' }}"
	"{% endif %}"
	"{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
	"{% endfor %}"
	"{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/* Qwen/Qwen2.5-* (Instruct and base): the tools branch names the default too. */
static const char qwen25_text[] =
	"{%- if tools %}\n"
	"    {{- '<|im_start|>system\\n' }}\n"
	"    {%- if messages[0]['role'] == 'system' %}\n"
	"        {{- messages[0]['content'] }}\n"
	"    {%- else %}\n"
	"        {{- '\001' }}\n"
	"    {%- endif %}\n"
	"    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query."
	"\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
	"    {%- for tool in tools %}\n"
	"        {{- \"\\n\" }}\n"
	"        {{- tool | tojson }}\n"
	"    {%- endfor %}\n"
	"    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name"
	" and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": "
	"<function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
	"{%- else %}\n"
	"    {%- if messages[0]['role'] == 'system' %}\n"
	"        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
	"    {%- else %}\n"
	"        {{- '<|im_start|>system\\n\001<|im_end|>\\n' }}\n"
	"    {%- endif %}\n"
	"{%- endif %}\n"
	"{%- for message in messages %}\n"
	"    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first)"
	" or (message.role == \"assistant\" and not message.tool_calls) %}\n"
	"        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
	"    {%- elif message.role == \"assistant\" %}\n"
	"        {{- '<|im_start|>' + message.role }}\n"
	"        {%- if message.content %}\n"
	"            {{- '\\n' + message.content }}\n"
	"        {%- endif %}\n"
	"        {%- for tool_call in message.tool_calls %}\n"
	"            {%- if tool_call.function is defined %}\n"
	"                {%- set tool_call = tool_call.function %}\n"
	"            {%- endif %}\n"
	"            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
	"            {{- tool_call.name }}\n"
	"            {{- '\", \"arguments\": ' }}\n"
	"            {{- tool_call.arguments | tojson }}\n"
	"            {{- '}\\n</tool_call>' }}\n"
	"        {%- endfor %}\n"
	"        {{- '<|im_end|>\\n' }}\n"
	"    {%- elif message.role == \"tool\" %}\n"
	"        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
	"            {{- '<|im_start|>user' }}\n"
	"        {%- endif %}\n"
	"        {{- '\\n<tool_response>\\n' }}\n"
	"        {{- message.content }}\n"
	"        {{- '\\n</tool_response>' }}\n"
	"        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
	"            {{- '<|im_end|>\\n' }}\n"
	"        {%- endif %}\n"
	"    {%- endif %}\n"
	"{%- endfor %}\n"
	"{%- if add_generation_prompt %}\n"
	"    {{- '<|im_start|>assistant\\n' }}\n"
	"{%- endif %}\n";

/* teknium/OpenHermes-2.5 and many ChatML fine-tunes: no default system turn. */
static const char chatml_text[] =
	"{% for message in messages %}"
	"{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
	"{% endfor %}"
	"{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/* meta-llama/Meta-Llama-3-8B-Instruct and -70B-Instruct. */
static const char llama3_text[] =
	"{% set loop_messages = messages %}"
	"{% for message in loop_messages %}"
	"{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
	"+ message['content'] | trim + '<|eot_id|>' %}"
	"{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
	"{{ content }}"
	"{% endfor %}"
	"{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

static const struct
{
	const char *name;
	ChatTemplateKind kind;
	const char *text;
}			known[] = {
	{"ChatML with a default system prompt (SmolLM2, Qwen2)", CHAT_TEMPLATE_CHATML, chatml_default_text},
	{"Qwen2.5's ChatML", CHAT_TEMPLATE_CHATML, qwen25_text},
	{"ChatML (OpenHermes)", CHAT_TEMPLATE_CHATML, chatml_text},
	{"Llama 3 Instruct", CHAT_TEMPLATE_LLAMA3, llama3_text},
};

/* ---- UTF-8 and Python's whitespace ------------------------------------- */

/* Decode the code point at s[0..len) into *cp; its byte length, or 0 if the bytes are not UTF-8. */
static int
utf8_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
	uint32_t	c;
	int			n;

	if (len == 0)
		return 0;
	if (s[0] < 0x80)
	{
		*cp = s[0];
		return 1;
	}
	if (s[0] >= 0xC2 && s[0] <= 0xDF)
		n = 2, c = s[0] & 0x1F;
	else if (s[0] >= 0xE0 && s[0] <= 0xEF)
		n = 3, c = s[0] & 0x0F;
	else if (s[0] >= 0xF0 && s[0] <= 0xF4)
		n = 4, c = s[0] & 0x07;
	else
		return 0;
	if ((size_t) n > len)
		return 0;
	for (int k = 1; k < n; k++)
	{
		if ((s[k] & 0xC0) != 0x80)
			return 0;
		c = (c << 6) | (s[k] & 0x3F);
	}
	/* overlong forms, surrogates and code points past U+10FFFF */
	if ((n == 3 && c < 0x800) || (n == 4 && (c < 0x10000 || c > 0x10FFFF)) ||
		(c >= 0xD800 && c <= 0xDFFF))
		return 0;
	*cp = c;
	return n;
}

/* Whether s[0..len) is valid UTF-8 without a NUL. */
static bool
utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *) s;
	size_t		at = 0;
	uint32_t	cp;

	while (at < len)
	{
		int			n = utf8_decode(p + at, len - at, &cp);

		if (n == 0 || cp == 0)
			return false;
		at += (size_t) n;
	}
	return true;
}

/* Whether Python's str.isspace() holds for a code point (what strip() and Jinja's \s remove). */
static bool
py_space(uint32_t cp)
{
	return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
		cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
		cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* Bytes of the Python-whitespace character at s[0..len), or 0 when there is none. */
static int
py_space_at(const char *s, size_t len)
{
	uint32_t	cp;
	int			n = utf8_decode((const unsigned char *) s, len, &cp);

	return n > 0 && py_space(cp) ? n : 0;
}

/* Bytes of the Python-whitespace character ending at s[len - 1], or 0. */
static int
py_space_before(const char *s, size_t len)
{
	for (int n = 1; n <= 4 && (size_t) n <= len; n++)
		if (((unsigned char) s[len - n] & 0xC0) != 0x80)
			return py_space_at(s + len - n, (size_t) n) == n ? n : 0;
	return 0;
}

/* s[0..*len) stripped of Python whitespace at both ends, as str.strip(): the start; *len updated. */
static const char *
py_strip(const char *s, size_t *len)
{
	int			n;

	while (*len > 0 && (n = py_space_at(s, *len)) > 0)
		s += n, *len -= (size_t) n;
	while (*len > 0 && (n = py_space_before(s, *len)) > 0)
		*len -= (size_t) n;
	return s;
}

/* ---- the Jinja lexer ------------------------------------------------------ */

typedef enum JTokType
{
	J_DATA, J_VAR_BEGIN, J_VAR_END, J_BLOCK_BEGIN, J_BLOCK_END, J_NAME, J_STRING, J_INT, J_OP
} JTokType;

typedef struct JTok
{
	JTokType	type;
	const char *text;			/* into Lexed.src or Lexed.strings */
	size_t		len;
	size_t		at;				/* byte offset in the newline-normalised text */
} JTok;

/* A template's tokens; src and strings own the token texts. */
typedef struct Lexed
{
	char	   *src;			/* the text with CRLF and CR read as LF, one final newline dropped */
	size_t		len;
	char	   *strings;		/* decoded string literals (never longer than their source) */
	size_t		strings_len;
	JTok	   *tok;
	int			n;
	int			cap;
	char		why[160];		/* why lexing stopped, when it did */
} Lexed;

/* Release a Lexed. */
static void
lexed_free(Lexed *lx)
{
	free(lx->src);
	free(lx->strings);
	free(lx->tok);
	memset(lx, 0, sizeof(*lx));
}

/* Append a token; false when out of memory. */
static bool
push(Lexed *lx, JTokType type, const char *text, size_t len, size_t at)
{
	if (lx->n == lx->cap)
	{
		int			cap = lx->cap ? lx->cap * 2 : 64;
		JTok	   *grown = realloc(lx->tok, sizeof(JTok) * (size_t) cap);

		if (grown == NULL)
			return false;
		lx->tok = grown;
		lx->cap = cap;
	}
	lx->tok[lx->n++] = (JTok) {type, text, len, at};
	return true;
}

/* Stop lexing with a reason (the template is then simply not recognised). */
static bool
give_up(Lexed *lx, size_t at, const char *what)
{
	snprintf(lx->why, sizeof(lx->why), "%s at byte %zu", what, at);
	return false;
}

/* Decode the string literal whose opening quote is at src[*pos]; false on what Jinja would read otherwise. */
static bool
lex_string(Lexed *lx, size_t *pos)
{
	const char *src = lx->src;
	char		quote = src[*pos];
	size_t		at = *pos + 1;
	char	   *out = lx->strings + lx->strings_len;
	size_t		n = 0;

	while (at < lx->len && src[at] != quote)
	{
		if (src[at] != '\\')
		{
			out[n++] = src[at++];
			continue;
		}
		if (at + 1 >= lx->len)
			break;
		switch (src[at + 1])
		{
			case 'n': out[n++] = '\n'; break;
			case 't': out[n++] = '\t'; break;
			case 'r': out[n++] = '\r'; break;
			case '\\': case '\'': case '"': out[n++] = src[at + 1]; break;
			default:
				/* octal, \x, \u, \N{...}, line continuation, unknown escapes: rare, not guessed */
				return give_up(lx, at, "a string escape peft does not read");
		}
		at += 2;
	}
	if (at >= lx->len)
		return give_up(lx, *pos, "an unterminated string");
	if (!push(lx, J_STRING, out, n, *pos))
		return give_up(lx, *pos, "out of memory");
	lx->strings_len += n;
	*pos = at + 1;
	return true;
}

/* Whether c continues a name. */
static bool
name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/*
 * Lex one tag's inside from *pos (just past its opening delimiter and
 * control sign) through its closing delimiter; *line_starting tells whether
 * what it consumed ended with a newline (for lstrip_blocks).
 */
static bool
lex_tag(Lexed *lx, size_t *pos, bool block, bool *line_starting)
{
	static const char *const two[] = {"//", "**", "==", "!=", ">=", "<="};
	const char *src = lx->src;
	size_t		at = *pos;
	int			depth = 0;
	char		stack[64];
	int			first = lx->n;

	for (;;)
	{
		while (at < lx->len && (src[at] == ' ' || src[at] == '\t' || src[at] == '\n' ||
								src[at] == '\r' || src[at] == '\f' || src[at] == '\v'))
			at++;
		if (at >= lx->len)
			return give_up(lx, at, "an unclosed tag");
		if (depth == 0)
		{
			const char *close = block ? "%}" : "}}";
			size_t		end = 0;
			bool		strip = false,
						keep = false;

			if (src[at] == '-' && strncmp(src + at + 1, close, 2) == 0)
				end = at + 3, strip = true;
			else if (block && src[at] == '+' && strncmp(src + at + 1, close, 2) == 0)
				end = at + 3, keep = true;
			else if (strncmp(src + at, close, 2) == 0)
				end = at + 2;
			if (end > 0)
			{
				/* {% raw %} changes how Jinja reads what follows */
				if (block && lx->n > first && lx->tok[first].type == J_NAME &&
					lx->tok[first].len == 3 && memcmp(lx->tok[first].text, "raw", 3) == 0)
					return give_up(lx, at, "a raw block");
				if (!push(lx, block ? J_BLOCK_END : J_VAR_END, src + at, end - at, at))
					return give_up(lx, at, "out of memory");
				if (strip)
				{
					int			n;

					while (end < lx->len && (n = py_space_at(src + end, lx->len - end)) > 0)
						end += (size_t) n;
				}
				else if (block && !keep && end < lx->len && src[end] == '\n')
					end++;		/* trim_blocks */
				*line_starting = src[end - 1] == '\n';
				*pos = end;
				return true;
			}
		}
		if (src[at] == '\'' || src[at] == '"')
		{
			if (!lex_string(lx, &at))
				return false;
			continue;
		}
		if (src[at] >= '0' && src[at] <= '9')
		{
			size_t		start = at;

			while (at < lx->len && src[at] >= '0' && src[at] <= '9')
				at++;
			/* floats, 0x.., 1_000, 1e5: not guessed */
			if (at < lx->len && (name_char(src[at]) ||
								 (src[at] == '.' && at + 1 < lx->len && src[at + 1] >= '0' && src[at + 1] <= '9')))
				return give_up(lx, start, "a number peft does not read");
			if (!push(lx, J_INT, src + start, at - start, start))
				return give_up(lx, start, "out of memory");
			continue;
		}
		if (name_char(src[at]))
		{
			size_t		start = at;

			while (at < lx->len && name_char(src[at]))
				at++;
			if (at < lx->len && (unsigned char) src[at] >= 0x80)
				return give_up(lx, at, "a non-ASCII name");
			if (!push(lx, J_NAME, src + start, at - start, start))
				return give_up(lx, start, "out of memory");
			continue;
		}
		{
			size_t		n = 0;

			for (size_t k = 0; k < sizeof(two) / sizeof(two[0]); k++)
				if (strncmp(src + at, two[k], 2) == 0)
					n = 2;
			if (n == 0 && src[at] != '\0' && strchr("+-/*%~[](){}<>=.:|,;", src[at]) != NULL)
				n = 1;
			if (n == 0)
				return give_up(lx, at, "a character peft does not read inside a tag");
			if (n == 1 && strchr("([{", src[at]) != NULL)
			{
				if (depth == (int) sizeof(stack))
					return give_up(lx, at, "brackets nested too deep");
				stack[depth++] = src[at] == '(' ? ')' : src[at] == '[' ? ']' : '}';
			}
			else if (n == 1 && strchr(")]}", src[at]) != NULL)
			{
				if (depth == 0 || stack[depth - 1] != src[at])
					return give_up(lx, at, "unbalanced brackets");
				depth--;
			}
			if (!push(lx, J_OP, src + at, n, at))
				return give_up(lx, at, "out of memory");
			at += n;
		}
	}
}

/* Emit the output text before a tag, after Jinja's whitespace control. */
static bool
push_data(Lexed *lx, size_t from, size_t to, char tag, char sign, bool line_starting)
{
	const char *src = lx->src;

	if (sign == '-')
	{
		int			n;

		while (to > from && (n = py_space_before(src + from, to - from)) > 0)
			to -= (size_t) n;
	}
	else if (sign != '+' && tag != '{')
	{
		/* lstrip_blocks: blank text from the line's start to a block or comment tag goes */
		size_t		line = to;
		size_t		k;
		int			n;

		while (line > from && src[line - 1] != '\n')
			line--;
		if (line > from || line_starting)
		{
			for (k = line; k < to && (n = py_space_at(src + k, to - k)) > 0; k += (size_t) n)
				;
			if (k == to)
				to = line;
		}
	}
	if (to > from && !push(lx, J_DATA, src + from, to - from, from))
		return give_up(lx, from, "out of memory");
	return true;
}

/*
 * Lex template text as Jinja 3 does with trim_blocks and lstrip_blocks
 * (keep_trailing_newline off); false with lx->why set when it cannot.
 */
static bool
lex_template(const char *text, size_t len, Lexed *lx)
{
	size_t		pos = 0;
	bool		line_starting = true;

	memset(lx, 0, sizeof(*lx));
	lx->src = malloc(len + 1);
	lx->strings = malloc(len + 1);
	if (lx->src == NULL || lx->strings == NULL)
		return give_up(lx, 0, "out of memory");
	/* \r\n and \r are newlines; one newline at the very end is dropped */
	for (size_t k = 0; k < len; k++)
	{
		if (text[k] == '\r')
		{
			lx->src[lx->len++] = '\n';
			if (k + 1 < len && text[k + 1] == '\n')
				k++;
		}
		else
			lx->src[lx->len++] = text[k];
	}
	if (lx->len > 0 && lx->src[lx->len - 1] == '\n')
		lx->len--;
	lx->src[lx->len] = '\0';

	while (pos < lx->len)
	{
		const char *src = lx->src;
		size_t		q = pos;
		char		tag,
					sign;

		while (q + 1 < lx->len && !(src[q] == '{' && (src[q + 1] == '{' || src[q + 1] == '%' || src[q + 1] == '#')))
			q++;
		if (q + 1 >= lx->len)
		{
			if (lx->len > pos && !push(lx, J_DATA, src + pos, lx->len - pos, pos))
				return give_up(lx, pos, "out of memory");
			break;
		}
		tag = src[q + 1];
		sign = q + 2 < lx->len && (src[q + 2] == '-' || src[q + 2] == '+') ? src[q + 2] : 0;
		if (!push_data(lx, pos, q, tag, sign, line_starting))
			return false;
		pos = q + 2 + (sign ? 1 : 0);
		if (tag == '#')
		{
			/* a comment: nothing is output; its end controls whitespace like a block's */
			const char *end = strstr(src + pos, "#}");
			size_t		after;

			if (end == NULL)
				return give_up(lx, q, "an unclosed comment");
			after = (size_t) (end - src) + 2;
			if (end > src + pos && end[-1] == '-')
			{
				int			n;

				while (after < lx->len && (n = py_space_at(src + after, lx->len - after)) > 0)
					after += (size_t) n;
			}
			else if (!(end > src + pos && end[-1] == '+') && after < lx->len && src[after] == '\n')
				after++;
			line_starting = src[after - 1] == '\n';
			pos = after;
			continue;
		}
		if (!push(lx, tag == '%' ? J_BLOCK_BEGIN : J_VAR_BEGIN, src + q, 2, q))
			return give_up(lx, q, "out of memory");
		if (!lex_tag(lx, &pos, tag == '%', &line_starting))
			return false;
	}

	/*
	 * message['role'] reads as message.role, messages[0]['content'] as
	 * messages[0].content: on a message (a dict, with no attribute of either
	 * name) Jinja's getitem and getattr agree
	 */
	for (int k = 1; k + 2 < lx->n; k++)
	{
		JTok	   *t = &lx->tok[k];
		JTok	   *prev = &lx->tok[k - 1];
		bool		subscript = (prev->type == J_NAME && prev->len == 7 && memcmp(prev->text, "message", 7) == 0) ||
			(prev->type == J_OP && prev->len == 1 && prev->text[0] == ']');

		if (subscript && t->type == J_OP && t->len == 1 && t->text[0] == '[' &&
			t[1].type == J_STRING && t[2].type == J_OP && t[2].len == 1 && t[2].text[0] == ']' &&
			((t[1].len == 4 && memcmp(t[1].text, "role", 4) == 0) ||
			 (t[1].len == 7 && memcmp(t[1].text, "content", 7) == 0)))
		{
			t->text = ".";
			t[1].type = J_NAME;
			memmove(t + 2, t + 3, sizeof(JTok) * (size_t) (lx->n - k - 3));
			lx->n--;
		}
	}
	return true;
}

/* ---- matching ------------------------------------------------------------- */

/*
 * Compare the model's tokens with a known template's: the number of tokens
 * that agree before the first difference (all of them on a match).  A hole
 * in a known string literal takes the model's text there, which must be the
 * same at every hole: *hole and *hole_len receive it.
 */
static int
match_tokens(const Lexed *model, const Lexed *want, const char **hole, size_t *hole_len)
{
	int			k;

	*hole = NULL;
	*hole_len = 0;
	for (k = 0; k < model->n && k < want->n; k++)
	{
		const JTok *m = &model->tok[k];
		const JTok *w = &want->tok[k];
		const char *mark;

		if (m->type != w->type)
			break;
		mark = w->type == J_STRING ? memchr(w->text, HOLE, w->len) : NULL;
		if (mark == NULL)
		{
			if (m->len != w->len || memcmp(m->text, w->text, m->len) != 0)
				break;
		}
		else
		{
			size_t		pre = (size_t) (mark - w->text);
			size_t		post = w->len - pre - 1;
			size_t		mid;

			if (m->len < pre + post || memcmp(m->text, w->text, pre) != 0 ||
				memcmp(m->text + m->len - post, mark + 1, post) != 0)
				break;
			mid = m->len - pre - post;
			if (*hole != NULL && (mid != *hole_len || memcmp(*hole, m->text + pre, mid) != 0))
				break;
			*hole = m->text + pre;
			*hole_len = mid;
		}
	}
	return k;
}

/* Up to 48 bytes of text as printable ASCII (escapes for the rest) into buf. */
static void
excerpt(const char *text, char *buf, size_t size)
{
	size_t		n = 0;

	for (size_t k = 0; text[k] != '\0' && k < 48 && n + 5 < size; k++)
	{
		unsigned char c = (unsigned char) text[k];

		if (c == '\n')
			n += (size_t) snprintf(buf + n, size - n, "\\n");
		else if (c == '"' || c == '\\')
			n += (size_t) snprintf(buf + n, size - n, "\\%c", c);
		else if (c >= 0x20 && c < 0x7F)
			buf[n++] = (char) c;
		else
			n += (size_t) snprintf(buf + n, size - n, "\\x%02x", c);
	}
	if (strlen(text) > 48 && n + 4 < size)
		n += (size_t) snprintf(buf + n, size - n, "...");
	buf[n] = '\0';
}

/* Fill out for known template k with its hole's text (NULL when it has none). */
static PeftCode
fill(ChatTemplate *out, int k, const char *hole, size_t hole_len, const char *bos_token, PeftError *err)
{
	out->kind = known[k].kind;
	out->name = known[k].name;
	out->stop = out->kind == CHAT_TEMPLATE_LLAMA3 ? "<|eot_id|>" : "<|im_end|>";
	if (hole != NULL && (out->default_system = strndup(hole, hole_len)) == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory reading a chat template");
	if (out->kind == CHAT_TEMPLATE_LLAMA3 &&
		(out->bos = strdup(bos_token ? bos_token : LLAMA3_BOS)) == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory reading a chat template");
	return PEFT_OK;
}

/* Recognise jinja as a template peft renders and fill out. */
PeftCode
chat_template_detect(const char *jinja, const char *bos_token, ChatTemplate *out, PeftError *err)
{
	size_t		len;
	Lexed		model;
	char		quoted[256];
	int			best = -1,
				best_k = -1;
	size_t		best_at = 0;
	PeftCode	rc;

	memset(out, 0, sizeof(*out));
	if (jinja == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "the model has no chat template; ask for a raw prompt instead");
	len = strnlen(jinja, (size_t) CHAT_TEMPLATE_MAX_TEXT + 1);
	if (len > CHAT_TEMPLATE_MAX_TEXT)
		return peft_fail(err, PEFT_ERR_INVALID, "chat template is longer than %d bytes", CHAT_TEMPLATE_MAX_TEXT);
	if (!utf8_valid(jinja, len))
		return peft_fail(err, PEFT_ERR_INVALID, "chat template is not valid UTF-8");
	if (bos_token != NULL &&
		(strnlen(bos_token, CHAT_TEMPLATE_MAX_TOKEN_TEXT + 1) > CHAT_TEMPLATE_MAX_TOKEN_TEXT ||
		 !utf8_valid(bos_token, strlen(bos_token))))
		return peft_fail(err, PEFT_ERR_INVALID, "BOS token text is longer than %d bytes or not valid UTF-8",
						 CHAT_TEMPLATE_MAX_TOKEN_TEXT);
	excerpt(jinja, quoted, sizeof(quoted));

	if (!lex_template(jinja, len, &model))
	{
		rc = strncmp(model.why, "out of memory", 13) == 0 ?
			peft_fail(err, PEFT_ERR_NOMEM, "out of memory reading a chat template") :
			peft_fail(err, PEFT_ERR_INVALID, "chat template \"%s\" (%zu bytes) is not one peft renders (%s); "
					  "it renders ChatML (SmolLM2, Qwen2, Qwen2.5, OpenHermes) and Llama 3 Instruct: "
					  "ask for a raw prompt instead", quoted, len, model.why);
		lexed_free(&model);
		return rc;
	}
	for (int k = 0; k < (int) (sizeof(known) / sizeof(known[0])); k++)
	{
		Lexed		want;
		const char *hole;
		size_t		hole_len;
		int			agree;

		if (!lex_template(known[k].text, strlen(known[k].text), &want))
		{
			/* only out of memory: the known texts lex */
			lexed_free(&want);
			lexed_free(&model);
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory reading a chat template");
		}
		agree = match_tokens(&model, &want, &hole, &hole_len);
		if (agree == model.n && agree == want.n)
		{
			rc = fill(out, k, hole, hole_len, bos_token, err);
			lexed_free(&want);
			lexed_free(&model);
			if (rc != PEFT_OK)
				chat_template_free(out);
			return rc;
		}
		if (agree > best)
		{
			best = agree;
			best_k = k;
			best_at = agree < model.n ? model.tok[agree].at : model.len;
		}
		lexed_free(&want);
	}
	lexed_free(&model);
	return peft_fail(err, PEFT_ERR_INVALID, "chat template \"%s\" (%zu bytes) is not one peft renders "
					 "(closest: %s, which it leaves near byte %zu); it renders ChatML (SmolLM2, Qwen2, "
					 "Qwen2.5, OpenHermes) and Llama 3 Instruct: ask for a raw prompt instead",
					 quoted, len, known[best_k].name, best_at);
}

/* Fill out as the raw template. */
void
chat_template_raw(ChatTemplate *out)
{
	memset(out, 0, sizeof(*out));
	out->kind = CHAT_TEMPLATE_RAW;
	out->name = "raw prompt";
}

/* Release what detect allocated and zero the struct. */
void
chat_template_free(ChatTemplate *tmpl)
{
	if (tmpl == NULL)
		return;
	free(tmpl->bos);
	free(tmpl->default_system);
	memset(tmpl, 0, sizeof(*tmpl));
}

/* ---- rendering ------------------------------------------------------------ */

/* The prompt being written: measured first (buf NULL), then filled. */
typedef struct Out
{
	char	   *buf;
	size_t		len;
	bool		too_long;
} Out;

/* Append len bytes (or only count them). */
static void
put(Out *o, const char *s, size_t len)
{
	if (o->too_long || len > CHAT_TEMPLATE_MAX_OUTPUT - o->len)
	{
		o->too_long = true;
		return;
	}
	if (o->buf)
		memcpy(o->buf + o->len, s, len);
	o->len += len;
}

/* Append a C string. */
static void
puts_out(Out *o, const char *s)
{
	put(o, s, strlen(s));
}

/* Write the whole prompt for an already validated conversation. */
static void
render_into(const ChatTemplate *t, const ChatMessage *msgs, int n, bool gen, Out *o)
{
	if (t->kind == CHAT_TEMPLATE_RAW)
	{
		puts_out(o, msgs[0].content);
		return;
	}
	if (t->kind == CHAT_TEMPLATE_CHATML)
	{
		if (t->default_system != NULL && msgs[0].role != CHAT_ROLE_SYSTEM)
		{
			puts_out(o, "<|im_start|>system\n");
			puts_out(o, t->default_system);
			puts_out(o, "<|im_end|>\n");
		}
		for (int k = 0; k < n; k++)
		{
			puts_out(o, "<|im_start|>");
			puts_out(o, chat_role_name(msgs[k].role));
			puts_out(o, "\n");
			puts_out(o, msgs[k].content);
			puts_out(o, "<|im_end|>\n");
		}
		if (gen)
			puts_out(o, "<|im_start|>assistant\n");
		return;
	}
	for (int k = 0; k < n; k++)
	{
		size_t		len = strlen(msgs[k].content);
		const char *s = py_strip(msgs[k].content, &len);

		if (k == 0)
			puts_out(o, t->bos);
		puts_out(o, "<|start_header_id|>");
		puts_out(o, chat_role_name(msgs[k].role));
		puts_out(o, "<|end_header_id|>\n\n");
		put(o, s, len);
		puts_out(o, "<|eot_id|>");
	}
	if (gen)
		puts_out(o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* Render n messages with the template into a malloc'd string. */
PeftCode
chat_template_render(const ChatTemplate *tmpl, const ChatMessage *msgs, int n,
					 bool add_generation_prompt, char **out, PeftError *err)
{
	Out			o = {0};

	*out = NULL;
	if (tmpl == NULL || (tmpl->kind != CHAT_TEMPLATE_RAW && tmpl->kind != CHAT_TEMPLATE_CHATML &&
						 tmpl->kind != CHAT_TEMPLATE_LLAMA3) ||
		(tmpl->kind == CHAT_TEMPLATE_LLAMA3 && tmpl->bos == NULL))
		return peft_fail(err, PEFT_ERR_INVALID, "no chat template to render with");
	if (n < 1 || n > CHAT_TEMPLATE_MAX_MESSAGES || msgs == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "a conversation has 1 to %d messages, not %d",
						 CHAT_TEMPLATE_MAX_MESSAGES, msgs == NULL ? 0 : n);
	for (int k = 0; k < n; k++)
	{
		if (msgs[k].role != CHAT_ROLE_SYSTEM && msgs[k].role != CHAT_ROLE_USER &&
			msgs[k].role != CHAT_ROLE_ASSISTANT)
			return peft_fail(err, PEFT_ERR_INVALID, "message %d has an unknown role (%d)", k + 1,
							 (int) msgs[k].role);
		if (msgs[k].content == NULL)
			return peft_fail(err, PEFT_ERR_INVALID, "message %d has no content", k + 1);
		if (!utf8_valid(msgs[k].content, strlen(msgs[k].content)))
			return peft_fail(err, PEFT_ERR_INVALID, "message %d is not valid UTF-8", k + 1);
	}
	if (tmpl->kind == CHAT_TEMPLATE_RAW && (n != 1 || msgs[0].role != CHAT_ROLE_USER))
		return peft_fail(err, PEFT_ERR_INVALID, "a raw prompt is one user message, not %d message%s "
						 "beginning with a %s one", n, n == 1 ? "" : "s", chat_role_name(msgs[0].role));

	render_into(tmpl, msgs, n, add_generation_prompt, &o);
	if (o.too_long)
		return peft_fail(err, PEFT_ERR_NOMEM, "the rendered prompt is longer than %zu bytes",
						 (size_t) CHAT_TEMPLATE_MAX_OUTPUT);
	if ((o.buf = malloc(o.len + 1)) == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory rendering a prompt of %zu bytes", o.len);
	o.len = 0;
	render_into(tmpl, msgs, n, add_generation_prompt, &o);
	o.buf[o.len] = '\0';
	*out = o.buf;
	return PEFT_OK;
}

/* ---- names ---------------------------------------------------------------- */

/* The role named "system", "user" or "assistant". */
PeftCode
chat_role_parse(const char *name, ChatRole *out, PeftError *err)
{
	static const ChatRole roles[] = {CHAT_ROLE_SYSTEM, CHAT_ROLE_USER, CHAT_ROLE_ASSISTANT};
	char		quoted[256];

	for (size_t k = 0; name != NULL && k < sizeof(roles) / sizeof(roles[0]); k++)
		if (strcmp(name, chat_role_name(roles[k])) == 0)
		{
			*out = roles[k];
			return PEFT_OK;
		}
	excerpt(name ? name : "(null)", quoted, sizeof(quoted));
	return peft_fail(err, PEFT_ERR_INVALID, "message role \"%s\" is not system, user or assistant", quoted);
}

/* "system", "user", "assistant"; "unknown" for other values. */
const char *
chat_role_name(ChatRole role)
{
	switch (role)
	{
		case CHAT_ROLE_SYSTEM:
			return "system";
		case CHAT_ROLE_USER:
			return "user";
		case CHAT_ROLE_ASSISTANT:
			return "assistant";
	}
	return "unknown";
}

/* "raw", "chatml", "llama3"; "unknown" for other values. */
const char *
chat_template_kind_name(ChatTemplateKind kind)
{
	switch (kind)
	{
		case CHAT_TEMPLATE_RAW:
			return "raw";
		case CHAT_TEMPLATE_CHATML:
			return "chatml";
		case CHAT_TEMPLATE_LLAMA3:
			return "llama3";
	}
	return "unknown";
}
