/*
 * network_internal.h - what the network (network.c), its encoder block
 * (encoder_block.c) and the method modules (method_*.c) share: the
 * activation buffers, the parameters in the backend's memory, dropout
 * masks, parameter declaration.  Not part of the engine's interface.
 */
#ifndef PEFT_ENGINE_NETWORK_INTERNAL_H
#define PEFT_ENGINE_NETWORK_INTERNAL_H

#include "act_table.h"
#include "encoder_block.h"
#include "method.h"
#include "network.h"

struct NetworkActivations
{
	ActTable	table;			/* every buffer below that lives in the backend */
	size_t		cap_rows;		/* packed rows N the buffers hold */
	size_t		cap_probs;		/* attention block elements they hold */
	size_t		cap_seqs;		/* sequences B they hold */
	size_t		cap_padded;		/* B*T token ids they hold */
	bool		train_layout;	/* every layer has its own buffers */
	bool		segment_layout; /* only what a mixed batch's segment needs (ACT_SHARED left out) */

	/* the packing of the last forward (host allocations, kept across releases) */
	int			B;
	int			N;
	size_t		nprobs;			/* elements of one layer's attention blocks */
	int32_t    *seq_start;		/* [B+1] sequence b is rows [seq_start[b], seq_start[b+1]) */
	int32_t    *rows;			/* [N] b*T + t of each packed row; -1 - v: virtual token v */
	size_t		cap_pack;		/* rows entries held */
	int			cap_pack_seqs;	/* seq_start entries held */

	/* the batch in the backend's memory (aliases of the host arrays on the CPU) */
	const int32_t *d_seq_start;
	const int32_t *d_rows;
	const int32_t *d_ids;
	const int32_t *d_labels;
	const real *d_targets;
	int32_t    *dev_seq_start;	/* their copies on a device */
	int32_t    *dev_rows;
	int32_t    *dev_ids;
	int32_t    *dev_labels;
	real	   *dev_targets;
	uint8_t    *mask_host;		/* host staging of dropout masks for a device */
	size_t		cap_mask_host;

	real	  **h;				/* [L+1][N, C] layer inputs/outputs (2 in inference) */
	real	   *emb;			/* [N, C] embeddings before LayerNorm */
	real	   *ln0_mean;
	real	   *ln0_rstd;
	uint8_t    *keep_emb;
	real	   *last;			/* points at the final hidden states */
	real	   *pooled;			/* [B, C] */
	real	   *normed;			/* [B, C] L2-normalised embeddings */
	real	   *norm;			/* [B] */
	real	   *head_out;		/* [B, K] */
	real	   *head_probs;		/* [B, K] */

	/* backward scratch */
	real	   *dh;				/* [N, C] gradient of a layer's output */
	real	   *dx;				/* [N, C] ... of its input */
	real	   *dres;			/* [N, C] through a dropout */
	real	   *dpooled;		/* [B, C] */
	real	   *dhead;			/* [B, K] */

	EncoderActs enc;			/* the encoder block's */
};

/*
 * A mixed batch in flight (network_forward_mixed): the segments whose
 * hooks run on their rows, a scratch for a linear's input when some
 * segment's input hook scales it (the shared product reads one matrix),
 * and the host arrays of the gathered LoRA product.
 */
struct MixedBatch
{
	MixedSegment *segments;
	int			nsegments;
	real	   *input;			/* [N, widest input], NULL when no segment scales inputs */
	bool	   *gathered;		/* [nsegments] host: whose LoRA runs in one product (mixed_lora.c) */
	LoraSegment *lora;			/* [nsegments] host: those segments for the backend */
};

/* Parameter i's value and gradient in the backend's memory. */
static inline real *
network_dvalue(const Network *net, int i)
{
	return net->dp.values + net->params.items[i].offset;
}

static inline real *
network_dgrad(const Network *net, int i)
{
	return net->dp.grads + net->params.items[i].offset;
}

/* The activation slot of layer l: its own while training, one shared in inference. */
static inline int
network_slot(int l, bool train)
{
	return train ? l : 0;
}

/* Declare a parameter named base_model.model.<path>.<suffix>; -1 on failure. */
int			network_declare(Network *net, const char *path, const char *suffix, int ndim,
							int64_t d0, int64_t d1, PeftError *err);

/*
 * Declare the modules' tensors at a site (method.h), in table order, and
 * note what trains there; false on failure.
 */
bool		network_declare_site(Network *net, MethodSite site, int l, int w, PeftError *err);

/* Fill x[n] with U(-bound, bound). */
void		network_uniform_fill(real *x, size_t n, double bound, PeftRng *rng);

/* Draw a fresh dropout mask keep[n] (in the backend's memory) from the network's generator. */
void		network_draw_mask(Network *net, uint8_t *keep, size_t n, double p);

/* Apply dropout in place to x[n] when training, drawing a fresh mask. */
void		network_dropout(Network *net, real *x, uint8_t *keep, double p, size_t n, bool train);

/* Whether module i's linear hooks are folded into merged weights (and so skipped). */
static inline bool
network_merged_away(const Network *net, int i)
{
	return net->merged != NULL && net->methods[i].m->merge_row != NULL;
}

#endif
