/*
 * mixed_lora.h - the plain-LoRA segments of a mixed batch in one gathered
 * product (mixed_lora.c), for the encoder block's linears.
 */
#ifndef PEFT_ENGINE_MIXED_LORA_H
#define PEFT_ENGINE_MIXED_LORA_H

#include "network_internal.h"

/*
 * Mark in gathered[nsg] the segments whose LoRA update at linear at runs
 * in one lora_sgmv call (their hooks there then must not run); returns
 * how many, 0 when the per-segment hooks should run for all (the CPU,
 * training, fewer than two such segments, PEFT_SGMV=0).
 */
int			mixed_lora_select(const Network *host, const MixedSegment *sg, int nsg, HookAt at,
							  bool train, bool *gathered);

/*
 * out (row stride ldo, outw wide) += the LoRA update of x (in wide) for
 * every segment marked in gathered, in one call of the backend.
 */
void		mixed_lora_forward(Network *host, const MixedSegment *sg, int nsg, HookAt at,
							   const bool *gathered, real *out, int ldo, const real *x, int in,
							   int outw);

#endif
