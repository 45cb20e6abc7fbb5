/*
 * ops_varlen.h - encoder operations on PACKED ("varlen", unpadded) batches,
 * forward/backward pairs in the style of ops.h.
 *
 * A packed batch holds only the real tokens of B sequences, back to back:
 * sequence b is rows [seq_start[b], seq_start[b+1]) of an [N, ...] tensor,
 * N = seq_start[B], and rows[n] = b*T + t names where packed row n came
 * from in the padded [B, T] batch.  A sequence may be empty.  Row-wise ops
 * (linear, LayerNorm, GELU, dropout) need nothing new: they run on N rows.
 * What does need the layout lives here: packing, embeddings, attention
 * within each sequence, pooling, and scattering back to [B, T].
 *
 * Attention probabilities of sequence b and head h form a len_b x len_b
 * block; blocks are stored sequence by sequence, heads within a sequence:
 * block (b, h) starts at NH * sum_{b' < b} len_b'^2 + h * len_b^2.  keep
 * masks and scratch buffers use the same layout.
 *
 * Conventions as ops.h: row-major `real` arrays, *_backward ACCUMULATES
 * (+=) into gradients that may be NULL, loops split over the engine
 * threads, matrix products through cblas_gemm.
 */
#ifndef PEFT_ENGINE_OPS_VARLEN_H
#define PEFT_ENGINE_OPS_VARLEN_H

#include <stddef.h>
#include <stdint.h>
#include "real.h"

/*
 * seq_start[B+1] and rows[N] of the real tokens (mask 1, any pattern) of a
 * padded mask[B,T], in row-major order; returns N.  rows may be NULL to
 * only count.
 */
int			varlen_pack(int32_t *seq_start, int32_t *rows, const int32_t *mask,
						int B, int T);

/* Elements of the packed attention blocks: NH * sum_b len_b^2. */
size_t		varlen_attention_size(const int32_t *seq_start, int B, int NH);

/*
 * out[N,C] = word[ids[rows[n]]] + pos[rows[n] % T] + type[type_ids[rows[n]]
 * or 0]: the embeddings of the packed tokens, each at its position in the
 * padded batch; ids and type_ids are [B,T] (type_ids may be NULL).
 */
void		varlen_embeddings_forward(real *out, const int32_t *ids,
									  const int32_t *type_ids,
									  const int32_t *rows, int N, int T,
									  const real *word, const real *pos,
									  const real *type, int C);

/*
 * Multi-head self-attention of each sequence over its own tokens, heads
 * split along C (head size HS = C/NH), for each sequence b and head h:
 *   probs[b,h] (len_b x len_b) = softmax(q_bh k_bh^T / sqrt(HS))
 *   out_bh (len_b x HS)        = dropout(probs[b,h], keep, p) @ v_bh
 * q, k, v are [N, ld] with the C columns at the pointer (ld >= C, so q, k
 * and v may be column slices of one [N, 3C] buffer with ld = 3C); out is
 * [N,C].  keep is NULL (no dropout) or has the probs layout; dropped (the
 * probs layout) receives the dropped weights and may be NULL without keep.
 * probs keeps the pre-dropout softmax for the backward pass.
 */
void		varlen_attention_forward(real *out, real *probs, real *dropped,
									 const real *q, const real *k,
									 const real *v, int ld,
									 const uint8_t *keep, real p,
									 const int32_t *seq_start, int B,
									 int C, int NH);
/*
 * dq, dk, dv [N, ld] += gradients given dout[N,C] (any may be NULL);
 * scratch has the probs layout.
 */
void		varlen_attention_backward(real *dq, real *dk, real *dv,
									  real *scratch, const real *dout,
									  const real *probs, const real *q,
									  const real *k, const real *v, int ld,
									  const uint8_t *keep, real p,
									  const int32_t *seq_start, int B,
									  int C, int NH);

/* out[B,C] = mean of each sequence's rows of inp[N,C]; zeros for an empty one */
void		varlen_mean_pool_forward(real *out, const real *inp,
									 const int32_t *seq_start, int B, int C);
/* dinp[N,C] += dout[b,:] / len_b on every row of sequence b */
void		varlen_mean_pool_backward(real *dinp, const real *dout,
									  const int32_t *seq_start, int B, int C);
/* out[B,C] = each sequence's first row ([CLS]); zeros for an empty one */
void		varlen_cls_pool_forward(real *out, const real *inp,
									const int32_t *seq_start, int B, int C);
/* dinp[first row of b,:] += dout[b,:] */
void		varlen_cls_pool_backward(real *dinp, const real *dout,
									 const int32_t *seq_start, int B, int C);

/* out[BT,C] = packed row n at rows[n], zeros in every other (padded) row */
void		varlen_scatter_rows(real *out, const real *packed,
								const int32_t *rows, int N, int BT, int C);

#endif
