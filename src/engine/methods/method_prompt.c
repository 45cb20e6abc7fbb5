/*
 * method_prompt.c - prompt tuning as a method module (method.h): V virtual
 * tokens, learned embeddings, start every packed sequence (rows -1 - v,
 * positions 0 .. V-1; the real tokens' positions follow).  Tensor:
 * prompt_embeddings [V, C]; each starts as the embedding of a random
 * vocabulary token (PEFT's SAMPLE_VOCAB).
 */
#include "network_internal.h"

#include <string.h>

/* Whether the options ask for virtual tokens. */
static bool
prompt_enabled(const NetworkOptions *o)
{
	return o->prompt_tokens > 0;
}

/* A count of virtual tokens the model's positions leave room for. */
static PeftCode
prompt_check(const BertModel *base, const NetworkOptions *o, PeftError *err)
{
	if (o->prompt_tokens < 0 || o->prompt_tokens > 256 ||
		o->prompt_tokens >= base->cfg.max_position)
		return peft_fail(err, PEFT_ERR_INVALID, "num_virtual_tokens must be between 1 and 256");
	return PEFT_OK;
}

/* V positions, each a packed row. */
static int
prompt_virtual_tokens(const NetworkOptions *o, int *rows)
{
	*rows = o->prompt_tokens;
	return o->prompt_tokens;
}

/* The virtual tokens' embeddings, before the model. */
static bool
prompt_declare(Network *net, void *state, MethodSite site, int l, int w, PeftError *err)
{
	if (site != SITE_INPUT)
		return true;
	net->mp.prompt = paramset_add(&net->params, "prompt_embeddings", 2, net->opts.prompt_tokens,
								  net->base->cfg.hidden_size, err);
	return net->mp.prompt >= 0;
}

/* Each virtual token starts as the embedding of a random vocabulary token. */
static void
prompt_initialise(Network *net, void *state, PeftRng *rng)
{
	const ModelConfig *cfg = &net->base->cfg;
	int			C = cfg->hidden_size;

	for (int v = 0; v < net->opts.prompt_tokens; v++)
		memcpy(param_value(&net->params, net->mp.prompt) + (size_t) v * C,
			   net->base->word_embeddings + (size_t) peft_rng_below(rng, cfg->vocab_size) * C,
			   sizeof(real) * C);
}

/* The table the embeddings op reads for rows -1 - v. */
static const real *
prompt_virtual_embeddings(Network *net, void *state)
{
	return network_dvalue(net, net->mp.prompt);
}

/* Each virtual token's gradient: its rows' gradients summed over the sequences. */
static void
prompt_embeddings_backward(Network *net, void *state, const real *demb)
{
	int			C = net->base->cfg.hidden_size;

	net->be->ops->prompt_backward(net->be, network_dgrad(net, net->mp.prompt), C, demb, C,
								  net->act->d_seq_start, net->act->B, net->opts.prompt_tokens, C);
}

const MethodModule method_prompt = {
	.name = "prompt",
	.check = prompt_check,
	.enabled = prompt_enabled,
	.virtual_tokens = prompt_virtual_tokens,
	.declare = prompt_declare,
	.initialise = prompt_initialise,
	.virtual_embeddings = prompt_virtual_embeddings,
	.embeddings_backward = prompt_embeddings_backward,
};
