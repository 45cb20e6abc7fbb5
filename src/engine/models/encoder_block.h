/*
 * encoder_block.h - one post-LayerNorm BERT encoder layer over the packed
 * rows (ops_varlen.h), written against the backend table and the method
 * modules' hooks (method.h):
 *
 *   qkv  = x Wqkv^T + bqkv                        (one product, hooks per slice)
 *   ctx  = attention(q, k, v)                     (or a module's attention)
 *   h1   = LayerNorm(sub(dropout(ctx Wo^T + bo)) + x)
 *   y    = LayerNorm(sub(dropout(GELU(h1 Wi^T + bi) Wd^T + bd)) + h1)
 *
 * sub: the modules' sublayer-output hooks.  A decoder block sits beside it
 * later, calling the same hooks.
 */
#ifndef PEFT_ENGINE_ENCODER_BLOCK_H
#define PEFT_ENGINE_ENCODER_BLOCK_H

#include <stdbool.h>
#include <stdint.h>
#include "act_table.h"
#include "real.h"
#include "status.h"

typedef struct Network Network;

/* Saved activations of one encoder layer, over the N packed rows. */
typedef struct LayerActs
{
	real	   *qkv;			/* [N, 3C] query | key | value of each row */
	real	   *probs;			/* attention blocks (ops_varlen.h), softmax before dropout */
	real	   *ctx;			/* [N, C] attention output */
	real	   *res1;			/* [N, C] dropout(attn dense) + x: LayerNorm 1 input */
	real	   *h1;				/* [N, C] LayerNorm 1 output */
	real	   *ln1_mean;		/* [N] */
	real	   *ln1_rstd;
	real	   *inter;			/* [N, FF] before GELU */
	real	   *gel;			/* [N, FF] after GELU */
	real	   *res2;			/* [N, C] dropout(output dense) + h1 */
	real	   *ln2_mean;
	real	   *ln2_rstd;
	uint8_t    *keep_attn;		/* dropout masks, NULL without dropout */
	uint8_t    *keep_ao;
	uint8_t    *keep_o;
} LayerActs;

/* The encoder block's buffers: every layer's, and backward scratch. */
typedef struct EncoderActs
{
	LayerActs  *layers;			/* [L] (only [0] in inference) */
	real	   *dh1;			/* [N, C] */
	real	   *dctx;			/* [N, C] */
	real	   *dqkv;			/* [N, 3C] */
	real	   *dgel;			/* [N, FF] */
	real	   *dinter;			/* [N, FF] */
	real	   *datt;			/* attention blocks; the dropped weights in forward */
	real	   *dout_copy;		/* [N, out] a linear's output gradient, for output hooks */
	real	   *dxin;			/* [N, in] the gradient of an input an input hook scaled */
} EncoderActs;

/* Declare the trainable tensors of layer l, site by site; false on failure. */
bool		encoder_block_declare(Network *net, int l, PeftError *err);

/* Add the block's buffers to the activation table. */
void		encoder_block_acts(Network *net, ActTable *t);

/* Layer l: y[N, C] from x[N, C] (train keeps its activations in its own slot). */
void		encoder_block_forward(Network *net, int l, const real *x, real *y, bool train);

/* Backward of layer l: act->dh (its output's gradient) -> act->dx when need_dx. */
void		encoder_block_backward(Network *net, int l, bool need_dx);

#endif
