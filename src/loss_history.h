/*
 * loss_history.h - a training job's loss curve, one point per optimizer
 * step, thinned evenly to at most LOSS_HISTORY_POINTS for long jobs.
 */
#ifndef PEFT_LOSS_HISTORY_H
#define PEFT_LOSS_HISTORY_H

/* Most points kept (peft.jobs shows them; a sparkline reads them). */
#define LOSS_HISTORY_POINTS 1000

typedef struct LossHistory
{
	int			count;
	int			stride;			/* steps between kept points: 1, then doubling */
	int			steps[LOSS_HISTORY_POINTS];
	double		loss[LOSS_HISTORY_POINTS];
	double		lr[LOSS_HISTORY_POINTS];
	int			last_step;		/* the newest step seen, kept or not */
	double		last_loss;
	double		last_lr;
} LossHistory;

/* An empty history. */
extern void LossHistoryInit(LossHistory *h);

/* Record optimizer step (1-based) with its loss and learning rate. */
extern void LossHistoryAdd(LossHistory *h, int step, double loss, double lr);

/*
 * The kept points and the newest step as three array literals (int[],
 * float8[], float8[]), palloc'd.
 */
extern void LossHistoryArrays(const LossHistory *h, char **steps, char **loss, char **lr);

#endif
