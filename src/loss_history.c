/*
 * loss_history.c - a training job's loss curve, one point per optimizer
 * step, thinned evenly for long jobs: when LOSS_HISTORY_POINTS are kept,
 * every other point goes and the stride between kept steps doubles, so
 * the points stay evenly spaced over the whole run.
 */
#include "postgres.h"

#include "lib/stringinfo.h"

#include "loss_history.h"

/* An empty history. */
void
LossHistoryInit(LossHistory *h)
{
	h->count = 0;
	h->stride = 1;
	h->last_step = 0;
}

/* Keep every other point (those on the doubled stride). */
static void
Thin(LossHistory *h)
{
	int			kept = 0;

	h->stride *= 2;
	for (int i = 0; i < h->count; i++)
		if (h->steps[i] % h->stride == 0)
		{
			h->steps[kept] = h->steps[i];
			h->loss[kept] = h->loss[i];
			h->lr[kept++] = h->lr[i];
		}
	h->count = kept;
}

/* Record optimizer step (1-based) with its loss and learning rate. */
void
LossHistoryAdd(LossHistory *h, int step, double loss, double lr)
{
	h->last_step = step;
	h->last_loss = loss;
	h->last_lr = lr;
	if (step % h->stride != 0)
		return;
	if (h->count == LOSS_HISTORY_POINTS)
	{
		Thin(h);
		if (step % h->stride != 0)
			return;
	}
	h->steps[h->count] = step;
	h->loss[h->count] = loss;
	h->lr[h->count++] = lr;
}

/* The kept points and the newest step as three array literals, palloc'd. */
void
LossHistoryArrays(const LossHistory *h, char **steps, char **loss, char **lr)
{
	StringInfoData s,
				l,
				r;
	bool		newest_kept = h->count > 0 && h->steps[h->count - 1] == h->last_step;

	initStringInfo(&s);
	initStringInfo(&l);
	initStringInfo(&r);
	for (int i = 0; i < h->count; i++)
	{
		appendStringInfo(&s, "%s%d", i ? "," : "", h->steps[i]);
		appendStringInfo(&l, "%s%.9g", i ? "," : "", h->loss[i]);
		appendStringInfo(&r, "%s%.9g", i ? "," : "", h->lr[i]);
	}
	/* the newest step always shows, so the curve ends where the job is */
	if (!newest_kept && h->last_step > 0)
	{
		appendStringInfo(&s, "%s%d", h->count ? "," : "", h->last_step);
		appendStringInfo(&l, "%s%.9g", h->count ? "," : "", h->last_loss);
		appendStringInfo(&r, "%s%.9g", h->count ? "," : "", h->last_lr);
	}
	*steps = psprintf("{%s}", s.data);
	*loss = psprintf("{%s}", l.data);
	*lr = psprintf("{%s}", r.data);
}
