/*
 * combine.h - weighted combinations of LoRA adapters (PEFT's
 * add_weighted_adapter, "linear" and "cat").
 */
#ifndef PEFT_ENGINE_COMBINE_H
#define PEFT_ENGINE_COMBINE_H

#include <stdbool.h>
#include "network.h"

/*
 * A new network over base whose LoRA weights combine the n plain LoRA
 * networks src with factors w ("cat" when cat, else "linear"); see
 * combine.c for the formulas.  The head is the weighted sum of the
 * sources' heads when they all have one of the same size, else absent.
 */
PeftCode	combine_lora(const BertModel *base, Network *const *src, int n,
						 const double *w, bool cat, Network **out, PeftError *err);

#endif
