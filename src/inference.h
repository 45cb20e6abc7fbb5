/*
 * inference.h - the per-backend cache of models and adapters that
 * inference.c keeps, for the other functions that predict (scoring.c).
 */
#ifndef PEFT_INFERENCE_H
#define PEFT_INFERENCE_H

#include "postgres.h"

#include "engine_api.h"
#include "utils/array.h"

typedef struct CachedModel
{
	char		name[NAMEDATALEN];
	char		checksum[65];
	char		path[MAXPGPATH];
	PeftModelHandle *handle;
	PeftModelInfo info;
	uint64		last_used;
	int			held;			/* > 0: decoding across calls holds it (never closed) */
} CachedModel;

typedef struct CachedAdapter
{
	char		name[NAMEDATALEN];
	int			version;
	char		row_version[32];	/* xmin of the catalog row */
	CachedModel *model;
	PeftAdapterHandle *handle;
	bool		regression;
	int			nlabels;
	char	  **labels;			/* in TopMemoryContext */
	int			max_length;		/* tokens per text, as trained (0: the model's) */
	uint64		last_used;
	uint64		pinned_call;	/* the last call that used it (kept until that call ends) */
	int			held;			/* > 0: a call running other SQL holds it (never let go) */
} CachedAdapter;

/* peft.adapter_cache_size: kB of adapters a backend keeps between calls. */
extern int	peft_adapter_cache_size;

/*
 * Start of a call that uses cached adapters: those it looks up stay valid
 * until the next call begins (older ones may be let go to keep the cache
 * within peft.adapter_cache_size).
 */
extern void AdapterCacheBeginCall(void);

/*
 * Hold (or release) an adapter across SQL that may itself call peft
 * functions (scoring runs the caller's query): a nested call's trim then
 * spares it.
 */
extern void AdapterCacheHold(CachedAdapter *a, bool hold);


/* The loaded model of a registered name (the caller may use it), loading it when needed.  Inside SPI. */
extern CachedModel *GetModel(const char *name);

/* Hold (or release) a model across calls (the serving worker's decoding): it is not closed meanwhile. */
extern void ModelCacheHold(CachedModel *m, bool hold);

/* The catalog fields of one adapter version, as LookupAdapterVersion reads them. */
typedef struct AdapterRow
{
	int			version;
	char	   *row_version;	/* xmin of the catalog row */
	char	   *model_name;
	char	   *task;
	ArrayType  *labels;			/* NULL: none */
	bool		merged;
	int			max_length;		/* 0: the model's */
} AdapterRow;

/* The row of version (0: the active one) of an adapter the caller may see; loads nothing.  Inside SPI. */
extern void LookupAdapterVersion(const char *name, int version, AdapterRow *row);

/* Version version (0: the active one) of an adapter the caller may use, cached.  Inside SPI. */
extern CachedAdapter *GetAdapterVersion(const char *name, int version);

/* Predict texts[0..n) through a: labels[i] (NULL: regression or a NULL text) and scores[i]. */
extern void PredictTexts(CachedAdapter *a, char **texts, int n, char **labels, double *scores);

/* The texts of a one-dimensional text[] argument (NULL for its NULL elements); *n of them. */
extern char **InputTexts(ArrayType *inputs, const char *argument, int *n);

/* ERROR (array_subscript_error) unless arrays a and b (named so) have the same number of elements. */
extern void RequireSameLength(const char *a, int na, const char *b, int nb);

/* first[i] = the first of rows 0..i naming the same adapter as row i (NULLs alike). */
extern void GroupByName(char **names, int n, int *first);

/*
 * Predict texts[0..n), row i through a[i] (adapters over one model), in
 * shared forward passes: labels[i] (NULL: regression or a NULL text) and
 * scores[i].
 */
extern void PredictMixed(CachedAdapter **a, char **texts, int n, char **labels, double *scores);

/* Embed texts[0..n) (none NULL) by model, text i through a[i] (NULL: the model alone): out[n, hidden]. */
extern void EmbedMixed(CachedModel *model, CachedAdapter **a, char **texts, int n, float *out);

#endif
