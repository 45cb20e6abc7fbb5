/*
 * chat_template.h - turn a conversation into the prompt text a chat model
 * was trained on, as Hugging Face transformers'
 * tokenizer.apply_chat_template(messages, tokenize=False,
 * add_generation_prompt=...) would, without a Jinja interpreter.
 *
 * A model ships its template as Jinja text (GGUF key
 * tokenizer.chat_template, or tokenizer_config.json's chat_template).
 * chat_template_detect recognises that text as one of the templates peft
 * knows, compared token by token after Jinja's own whitespace rules
 * (transformers' trim_blocks and lstrip_blocks, "-" markers, one final
 * newline dropped, CRLF read as LF, comments ignored, 'a' and "a" alike,
 * message['role'] read as message.role), so a template that renders
 * differently from a known one is never taken for it:
 *
 *   ChatML: <|im_start|>role\ncontent<|im_end|>\n per message, then
 *     <|im_start|>assistant\n as the generation prompt; stop text
 *     <|im_end|>.  The templates of SmolLM2-Instruct, Qwen2-Instruct and
 *     Qwen2.5(-Instruct) insert a default system turn when the
 *     conversation does not begin with one; its text is taken from the
 *     template (default_system).  OpenHermes-style ChatML has none.
 *   Llama 3 (Meta-Llama-3-*-Instruct): <|begin_of_text|> (the tokenizer's
 *     BOS text) before the first message, each message
 *     <|start_header_id|>role<|end_header_id|>\n\n + content stripped of
 *     leading and trailing whitespace as Python's str.strip() does (Unicode
 *     whitespace included) + <|eot_id|>; generation prompt
 *     <|start_header_id|>assistant<|end_header_id|>\n\n; stop text
 *     <|eot_id|>.  Llama 3.1 and later templates (dates, tools) are not
 *     this one and are refused.
 *
 * Anything else is refused with PEFT_ERR_INVALID; a caller that wants the
 * user's text used as it is takes chat_template_raw instead.
 *
 * The rendered text holds the markers as plain text (so does content that
 * looks like a marker: it is copied unchanged, as transformers does).  The
 * tokenizer decides which marker texts become special tokens; it must not
 * add a BOS token of its own to a Llama 3 prompt, which already begins with
 * the BOS text.  Generation ends at the stop text or at the model's EOS.
 */
#ifndef PEFT_ENGINE_CHAT_TEMPLATE_H
#define PEFT_ENGINE_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>
#include "status.h"

/* The longest template text read (real ones are under 10 KB). */
#define CHAT_TEMPLATE_MAX_TEXT (1 << 20)
/* The longest BOS text accepted. */
#define CHAT_TEMPLATE_MAX_TOKEN_TEXT 256
/* Messages in one conversation. */
#define CHAT_TEMPLATE_MAX_MESSAGES 65536
/* The longest rendered prompt, NUL excluded (PostgreSQL's largest allocation). */
#define CHAT_TEMPLATE_MAX_OUTPUT (((size_t) 1 << 30) - 1)

typedef enum ChatTemplateKind
{
	CHAT_TEMPLATE_RAW = 0,		/* no template: one user message, used as it is */
	CHAT_TEMPLATE_CHATML,
	CHAT_TEMPLATE_LLAMA3
} ChatTemplateKind;

typedef enum ChatRole
{
	CHAT_ROLE_SYSTEM = 0,
	CHAT_ROLE_USER,
	CHAT_ROLE_ASSISTANT
} ChatRole;

/* One turn: content is NUL-terminated UTF-8 (may be empty), borrowed. */
typedef struct ChatMessage
{
	ChatRole	role;
	const char *content;
} ChatMessage;

/* A recognised template; chat_template_free releases what it owns. */
typedef struct ChatTemplate
{
	ChatTemplateKind kind;
	const char *name;			/* which known template matched, for messages (static) */
	const char *stop;			/* end-of-turn text ("<|im_end|>", "<|eot_id|>"); NULL for raw (static) */
	char	   *bos;			/* Llama 3: the text before the first message; NULL otherwise */
	char	   *default_system; /* ChatML: the system turn added when none comes first; NULL if none */
} ChatTemplate;

/*
 * Recognise jinja (NUL-terminated, valid UTF-8, at most
 * CHAT_TEMPLATE_MAX_TEXT bytes) as a template peft renders and fill out.
 * bos_token is the tokenizer's BOS text, which Llama 3's template places
 * first (GGUF: tokenizer.ggml.tokens[tokenizer.ggml.bos_token_id]); NULL
 * means "<|begin_of_text|>".  A NULL jinja (the model has none), invalid
 * UTF-8 or a template that is not a known one is PEFT_ERR_INVALID with a
 * message quoting the template's start and where it parts from the closest
 * known one; out is then zeroed.
 */
PeftCode	chat_template_detect(const char *jinja, const char *bos_token, ChatTemplate *out,
								 PeftError *err);

/* Fill out as the raw template: render accepts one user message and returns its text unchanged. */
void		chat_template_raw(ChatTemplate *out);

/*
 * Render n messages (1 to CHAT_TEMPLATE_MAX_MESSAGES, roles system, user,
 * assistant in any order, contents valid UTF-8) with the template, followed
 * by the generation prompt when add_generation_prompt, into *out: a
 * NUL-terminated malloc'd string the caller frees.  Bad arguments (no
 * messages, a NULL or invalid-UTF-8 content, an unknown role, a raw
 * template given anything but one user message) are PEFT_ERR_INVALID; a
 * prompt over CHAT_TEMPLATE_MAX_OUTPUT bytes is PEFT_ERR_NOMEM.  *out is
 * NULL on failure.
 */
PeftCode	chat_template_render(const ChatTemplate *tmpl, const ChatMessage *msgs, int n,
								 bool add_generation_prompt, char **out, PeftError *err);

/* Release what detect allocated and zero the struct.  NULL and a zeroed struct are allowed. */
void		chat_template_free(ChatTemplate *tmpl);

/* The role named "system", "user" or "assistant"; PEFT_ERR_INVALID naming anything else. */
PeftCode	chat_role_parse(const char *name, ChatRole *out, PeftError *err);
/* "system", "user", "assistant"; "unknown" for other values. */
const char *chat_role_name(ChatRole role);
/* "raw", "chatml", "llama3"; "unknown" for other values. */
const char *chat_template_kind_name(ChatTemplateKind kind);

#endif
