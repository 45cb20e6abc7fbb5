/*
 * method_modules.c - the table of method modules (method.h).  A new method
 * is a new file and a row here.
 *
 * The order matters where the modules share something: initialisation
 * draws from one seeded generator in this order (LoRA's A, the bottleneck
 * adapters' down projections, prompt tuning's and prefix tuning's tokens),
 * so reordering changes every adapter a seed makes; at a site, parameters
 * are declared in this order (LoRA before (IA)^3 at a linear, BitFit's
 * LayerNorm biases before the bottleneck adapters); at a linear, output
 * hooks run in it and their gradients in reverse.
 */
#include "method.h"

static const MethodModule *const modules[] = {
	&method_lora,
	&method_ia3,
	&method_bitfit,
	&method_bottleneck,
	&method_prompt,
	&method_prefix,
};

/* The table and its length. */
const MethodModule *const *
method_modules(int *count)
{
	*count = (int) (sizeof(modules) / sizeof(modules[0]));
	return modules;
}
