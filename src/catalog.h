/*
 * catalog.h - access to peft's catalog tables from C.
 *
 * The tables are writable only by the extension's owner; functions that
 * change them check the caller's rights first, then write as the owner
 * (CatalogAsOwner), with schema-qualified SQL and search_path pinned to
 * pg_catalog, so no operator, function or type of the caller's runs as the
 * owner.
 */
#ifndef PEFT_CATALOG_H
#define PEFT_CATALOG_H

#include "postgres.h"

#include "datatype/timestamp.h"

#include "engine_api.h"

/* A registered base model (peft.models). */
typedef struct CatalogModel
{
	char	   *name;
	char	   *path;
	char	   *checksum;
	char	   *owner;
	int64		file_bytes;		/* size of model.safetensors when registered */
	bool		has_mtime;		/* false for rows registered before 0.2.0, until verified */
	TimestampTz file_mtime;		/* its modification time then */
} CatalogModel;

/* The role that owns the extension (and so the catalog tables). */
extern Oid	ExtensionOwner(void);

/* Saved user context while running as the extension owner. */
typedef struct OwnerContext
{
	Oid			saved_user;
	int			saved_sec;
	int			guc_nestlevel;	/* undoes the pinned search_path */
} OwnerContext;

/* Switch to the extension owner for catalog writes; undo with CatalogAsCaller. */
extern void CatalogAsOwner(OwnerContext *ctx);
extern void CatalogAsCaller(const OwnerContext *ctx);

/* ERROR unless role may see every existing version of adapter name. */
extern void CheckAdapterNameOwner(const char *name, Oid role);

/*
 * ERROR (undefined_object) for a version of adapter name the caller cannot
 * find: version 0 is the active one.
 */
extern void CatalogVersionMissing(const char *name, int version) pg_attribute_noreturn();

/* Look up a model by name as the caller; ERROR if absent. */
extern CatalogModel *CatalogGetModel(const char *name);

/* A new adapter version, as CatalogInsertVersion stores it. */
typedef struct CatalogVersion
{
	const char *name;
	const char *base_model;		/* the registered model's name */
	const char *method;			/* canonical, e.g. "dora+bitfit" */
	const char *task;			/* classification, regression or embedding */
	const char *config;			/* adapter_config.json text */
	const char *labels;			/* text[] literal of the class names (CatalogTextArrayLiteral);
								 * NULL for regression and embedding */
	bytea	   *weights;		/* adapter_model.safetensors bytes */
	const char *metrics;		/* JSON */
	int64		job;			/* the training job, 0 for none */
	Oid			owner;			/* the role the version belongs to */
	bool		activate;
} CatalogVersion;

/*
 * Store a new version of v->name (numbered under a lock on the name, so
 * concurrent callers get distinct versions; activated if asked) after
 * checking v->owner's right to the name; returns the version.  Inside SPI.
 */
extern int	CatalogInsertVersion(const CatalogVersion *v);

/* Serialise changes to adapter name's versions until the transaction ends.  Inside SPI. */
extern void CatalogLockName(const char *name);

/*
 * Delete every version of name (all) or one version, under the name's
 * lock; if the active one went and others remain, activate the newest
 * (*activated, else 0).  Returns the count deleted; *remaining is what is
 * left.  Inside SPI, after the caller's right to the name is checked.
 */
extern int	CatalogDropVersions(const char *name, bool all, int version, int *activated,
								int64 *remaining);

/* Append an evaluation (JSON object) to metrics->'evaluations' of a version.  Inside SPI. */
extern void CatalogRecordEvaluation(const char *name, int version, const char *evaluation);

/* A text[] literal of n strings, for SPI parameters. */
extern char *CatalogTextArrayLiteral(int n, char *const *items);

/*
 * Record a training job (the JOB_NUM_FIELDS columns of worker.h's JobField
 * order, as text) as the extension owner; returns its id.  Inside SPI.
 */
extern int64 CatalogInsertJob(char *const *fields);

/* A model folder as peft_register_model records it. */
typedef struct CatalogModelRow
{
	const char *name;
	const char *path;			/* resolved */
	const PeftModelInfo *info;	/* what the engine read there */
	const char *checksum;		/* SHA-256 of model.safetensors */
	TimestampTz file_mtime;		/* its modification time */
} CatalogModelRow;

/*
 * Record a model (or update the caller's own, or any as a superuser) as the
 * extension owner; returns the peft.models row, valid after SPI_finish.
 * Inside SPI.
 */
extern Datum CatalogRecordModel(const CatalogModelRow *row);

/* Whether peft.<table> has column (columns added by updates; inside SPI). */
extern bool CatalogHasColumn(const char *table, const char *column);

/* Check a model or adapter name: 1..63 of [A-Za-z0-9_.-]. */
extern void CheckCatalogName(const char *what, const char *name);

#endif
