/*
 * mixed_lora.c - the plain-LoRA segments of a mixed batch in one gathered
 * product (the backend's lora_sgmv, Punica's SGMV) instead of two small
 * GEMMs per segment at each linear: with a hundred adapters, two launches
 * per linear instead of two hundred.
 *
 * Only where it pays and changes nothing else: on a device backend (the
 * CPU keeps its per-segment products, as fast there and the reference),
 * in inference (mixed batches do not train, and LoRA dropout would need
 * its own masks), and only for segments whose one hook at the linear is
 * an unmerged LoRA branch without DoRA: every other segment keeps its
 * hooks.  PEFT_SGMV=0 in the environment turns it off (benchmarks compare
 * the two paths with it).
 */
#include "mixed_lora.h"

#include <stdlib.h>
#include <string.h>

/* Whether the environment leaves the gathered product on (PEFT_SGMV unset or not "0"). */
static bool
sgmv_enabled(void)
{
	const char *v = getenv("PEFT_SGMV");

	return v == NULL || strcmp(v, "0") != 0;
}

/*
 * Whether net's one hook at linear at is an unmerged plain LoRA branch of
 * a rank lora_sgmv takes (so the gathered product is all its hooks would do).
 */
static bool
plain_lora_at(const Network *net, HookAt at)
{
	const LayerParams *lp = &net->lp[at.l];

	if ((net->hooks[at.l].linear[at.w] & ~HOOK_MERGES) != HOOK_BRANCH ||
		lp->lora[at.w][0] < 0 || lp->dora[at.w] >= 0 ||
		net->opts.lora.r > BACKEND_SGMV_MAX_RANK)
		return false;
	for (int i = 0; i < net->nmethods; i++)
		if (net->methods[i].m->linear_branch != NULL &&
			(net->methods[i].m != &method_lora || network_merged_away(net, i)))
			return false;
	return true;
}

/* Which segments' LoRA at linear at runs gathered (mixed_lora.h); how many. */
int
mixed_lora_select(const Network *host, const MixedSegment *sg, int nsg, HookAt at, bool train,
				  bool *gathered)
{
	int			n = 0;

	if (host->be->host_memory || train || nsg < 2 || !sgmv_enabled())
		return 0;
	for (int i = 0; i < nsg; i++)
		n += (gathered[i] = sg[i].rows > 0 && plain_lora_at(sg[i].net, at));
	return n >= 2 ? n : 0;
}

/* out (row stride ldo) += the LoRA update of every gathered segment, in one call. */
void
mixed_lora_forward(Network *host, const MixedSegment *sg, int nsg, HookAt at,
				   const bool *gathered, real *out, int ldo, const real *x, int in, int outw)
{
	LoraSegment *ls = host->mixed->lora;
	int			n = 0;

	for (int i = 0; i < nsg; i++)
	{
		const Network *net = sg[i].net;
		const LayerParams *lp = &net->lp[at.l];

		if (!gathered[i])
			continue;
		ls[n++] = (LoraSegment) {
			.A = network_dvalue(net, lp->lora[at.w][0]),
			.B = network_dvalue(net, lp->lora[at.w][1]),
			.row0 = sg[i].row0,
			.rows = sg[i].rows,
			.rank = net->opts.lora.r,
			.scale = net->scaling,
		};
	}
	host->be->ops->lora_sgmv(host->be, out, ldo, x, in, ls, n, in, outw);
}
