/*
 * catalog.c - access to peft's catalog tables from C.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "lib/stringinfo.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "worker.h"

/* The role that owns the extension (and so the catalog tables). */
Oid
ExtensionOwner(void)
{
	bool		isnull;
	Datum		d;

	if (SPI_execute("SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'peft'",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"peft\" is not installed in this database")));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return DatumGetObjectId(d);
}

/*
 * Switch to the extension owner for catalog writes.  A restricted
 * operation: nothing run meanwhile can change settings or create
 * objects.  An ERROR in between restores the caller at transaction abort.
 *
 * search_path is pinned to pg_catalog meanwhile, as for a SECURITY DEFINER
 * function with SET search_path: otherwise a caller who puts a schema of
 * its own before pg_catalog (SET search_path = mine, pg_catalog) gets its
 * own "=" operator (or a type's domain check) run by the owner's SQL, with
 * the owner's rights, e.g. a superuser's.
 */
void
CatalogAsOwner(OwnerContext *ctx)
{
	Oid			owner = ExtensionOwner();

	ctx->guc_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	GetUserIdAndSecContext(&ctx->saved_user, &ctx->saved_sec);
	SetUserIdAndSecContext(owner, ctx->saved_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
}

/* Return to the caller's identity and search_path. */
void
CatalogAsCaller(const OwnerContext *ctx)
{
	SetUserIdAndSecContext(ctx->saved_user, ctx->saved_sec);
	AtEOXact_GUC(true, ctx->guc_nestlevel);
}

/*
 * ERROR unless role may see (through row-level security: its own, those of
 * roles it belongs to) every existing version of adapter name.  Names are
 * shared by all roles, with one active version per name, so training,
 * activating or dropping versions of a name that another role also uses
 * would deactivate or delete that role's adapters.
 */
void
CheckAdapterNameOwner(const char *name, Oid role)
{
	Oid			types[2] = {TEXTOID, OIDOID};
	Datum		values[2] = {CStringGetTextDatum(name), ObjectIdGetDatum(role)};
	OwnerContext octx;
	bool		taken;

	/* superusers see every version (row-level security does not apply) */
	if (superuser_arg(role))
		return;
	CatalogAsOwner(&octx);
	/*
	 * owner may name a dropped role (pg_has_role would raise "role does not
	 * exist"): its versions count as another role's, which a superuser may
	 * still drop.
	 */
	if (SPI_execute_with_args("SELECT 1 FROM peft.adapters WHERE name = $1 "
							  "AND NOT coalesce(pg_catalog.pg_has_role($2, "
							  "pg_catalog.to_regrole(pg_catalog.quote_ident(owner)), 'MEMBER'), false)",
							  2, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read peft.adapters");
	taken = SPI_processed > 0;
	CatalogAsCaller(&octx);
	if (taken)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("adapter name \"%s\" belongs to another role", name),
				 errdetail("Adapter names are shared by all roles; this one has versions of a role whose adapters you cannot see."),
				 errhint("Choose another adapter name.")));
}

/* Copy column n of the current SPI row as a palloc'd C string (NULL if null). */
static char *
spi_text(int row, int col)
{
	return SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col);
}

/* Look up a model by name as the caller; ERROR if absent. */
CatalogModel *
CatalogGetModel(const char *name)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	CatalogModel *m;

	bool		isnull;
	Datum		d;

	/*
	 * file_mtime came with 0.2.0: read through to_jsonb so that a database
	 * whose extension is still at 0.1.0 (not yet ALTER EXTENSION ... UPDATE)
	 * works with this library too.
	 */
	if (SPI_execute_with_args("SELECT name, path, checksum, owner, file_bytes, "
							  "  (pg_catalog.to_jsonb(m) OPERATOR(pg_catalog.->>) 'file_mtime')::pg_catalog.timestamptz "
							  "FROM peft.models m WHERE name = $1",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read peft.models");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" is not registered", name),
				 errhint("Register it with peft_register_model(name, path).")));
	m = palloc0(sizeof(CatalogModel));
	m->name = spi_text(0, 1);
	m->path = spi_text(0, 2);
	m->checksum = spi_text(0, 3);
	m->owner = spi_text(0, 4);
	m->file_bytes = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5, &isnull));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6, &isnull);
	m->has_mtime = !isnull;
	m->file_mtime = isnull ? 0 : DatumGetTimestampTz(d);
	return m;
}

/* Check a model or adapter name: 1..63 of [A-Za-z0-9_.-]. */
void
CheckCatalogName(const char *what, const char *name)
{
	size_t		len = strlen(name);

	for (const char *p = name; *p; p++)
		if (!(isalnum((unsigned char) *p) || *p == '_' || *p == '.' || *p == '-'))
		{
			len = 0;
			break;
		}
	if (len == 0 || len > 63)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("invalid %s name \"%s\"", what, name),
				 errdetail("Names are 1 to 63 characters of letters, digits, \"_\", \".\" and \"-\".")));
}

/*
 * Whether peft.<table> has column.  The library serves every database of
 * the server, some of which may still have an older version of the
 * extension's catalog, until ALTER EXTENSION peft UPDATE runs there.
 */
bool
CatalogHasColumn(const char *table, const char *column)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2] = {CStringGetTextDatum(table), CStringGetTextDatum(column)};

	if (SPI_execute_with_args("SELECT 1 FROM pg_catalog.pg_attribute a "
							  "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
							  "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
							  "WHERE n.nspname = 'peft' AND c.relname = $1 AND a.attname = $2 "
							  "AND NOT a.attisdropped",
							  2, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_attribute");
	return SPI_processed == 1;
}

/* A text[] literal of n strings ("{}" quoting of each), for SPI parameters. */
char *
CatalogTextArrayLiteral(int n, char *const *items)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int i = 0; i < n; i++)
	{
		appendStringInfoString(&buf, i ? ",\"" : "\"");
		for (const char *p = items[i]; *p; p++)
		{
			if (*p == '"' || *p == '\\')
				appendStringInfoChar(&buf, '\\');
			appendStringInfoChar(&buf, *p);
		}
		appendStringInfoChar(&buf, '"');
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/*
 * Serialise changes to adapter name's versions until the transaction ends
 * (numbering a new one, dropping, activating the next).  Inside SPI.
 */
void
CatalogLockName(const char *name)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};

	if (SPI_execute_with_args("SELECT pg_catalog.pg_advisory_xact_lock("
							  "pg_catalog.hashtext('peft.adapters:' OPERATOR(pg_catalog.||) $1))",
							  1, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not lock the adapter name");
}

/*
 * Delete every version of name (all) or one version, as the owner, under
 * the name's lock.  When the active version went and others remain, the
 * newest remaining becomes active: *activated is its number, else 0.
 * Returns how many versions were deleted; *remaining how many are left.
 * Inside SPI; the caller has checked its right to the name.
 */
int
CatalogDropVersions(const char *name, bool all, int version, int *activated, int64 *remaining)
{
	Oid			types[3] = {TEXTOID, BOOLOID, INT4OID};
	Datum		values[3] = {CStringGetTextDatum(name), BoolGetDatum(all), Int32GetDatum(version)};
	OwnerContext octx;
	bool		was_active = false;
	bool		isnull;
	int			dropped;

	*activated = 0;
	CatalogAsOwner(&octx);
	CatalogLockName(name);
	if (SPI_execute_with_args("DELETE FROM peft.adapters WHERE name = $1 AND ($2 OR version = $3) "
							  "RETURNING active",
							  3, types, values, NULL, false, 0) != SPI_OK_DELETE_RETURNING)
		elog(ERROR, "could not drop the adapter");
	dropped = (int) SPI_processed;
	for (int i = 0; i < dropped; i++)
		was_active |= DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	if (SPI_execute_with_args("SELECT count(*) FROM peft.adapters WHERE name = $1",
							  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read peft.adapters");
	*remaining = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (was_active && *remaining > 0)
	{
		if (SPI_execute_with_args("UPDATE peft.adapters SET active = true WHERE name = $1 AND version = "
								  "(SELECT max(version) FROM peft.adapters WHERE name = $1) "
								  "RETURNING version",
								  1, types, values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING ||
			SPI_processed != 1)
			elog(ERROR, "could not activate the adapter's newest version");
		*activated = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	CatalogAsCaller(&octx);
	return dropped;
}

/* Store a new adapter version as the extension owner; returns the version. */
int
CatalogInsertVersion(const CatalogVersion *v)
{
	Oid			types[11] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, BYTEAOID,
		TEXTOID, INT8OID, TEXTOID, BOOLOID};
	Datum		values[11];
	char		nulls[11] = "           ";
	OwnerContext octx;
	bool		isnull;
	int			version;

	values[0] = CStringGetTextDatum(v->name);
	values[1] = CStringGetTextDatum(v->base_model);
	values[2] = CStringGetTextDatum(v->method);
	values[3] = CStringGetTextDatum(v->task);
	values[4] = CStringGetTextDatum(v->config);
	values[5] = v->labels ? CStringGetTextDatum(v->labels) : (Datum) 0;
	nulls[5] = v->labels ? ' ' : 'n';
	values[6] = PointerGetDatum(v->weights);
	values[7] = CStringGetTextDatum(v->metrics);
	values[8] = Int64GetDatum(v->job);
	nulls[8] = v->job ? ' ' : 'n';
	values[9] = CStringGetTextDatum(GetUserNameFromId(v->owner, false));
	values[10] = BoolGetDatum(v->activate);

	/* checked at call time too; again here, as another role may have used the name since */
	CheckAdapterNameOwner(v->name, v->owner);
	CatalogAsOwner(&octx);
	CatalogLockName(v->name);
	if (v->activate &&
		SPI_execute_with_args("UPDATE peft.adapters SET active = false WHERE name = $1 AND active",
							  1, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not deactivate the adapter's versions");
	if (SPI_execute_with_args("INSERT INTO peft.adapters (name, version, base_model, method, task, "
							  "  config, labels, weights, metrics, job, owner, active) "
							  "SELECT $1, coalesce(max(version), 0) + 1, $2, $3, $4, $5::jsonb, "
							  "  $6::text[], $7, $8::jsonb, $9, $10::name, $11 "
							  "FROM peft.adapters WHERE name = $1 RETURNING version",
							  11, types, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "could not insert the adapter");
	version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	CatalogAsCaller(&octx);
	return version;
}

/* Record a training job as the extension owner; returns its id. */
int64
CatalogInsertJob(char *const *fields)
{
	Oid			types[JOB_NUM_FIELDS];
	Datum		values[JOB_NUM_FIELDS];
	OwnerContext octx;
	int64		id;

	for (int i = 0; i < JOB_NUM_FIELDS; i++)
	{
		types[i] = TEXTOID;
		values[i] = CStringGetTextDatum(fields[i]);
	}
	CatalogAsOwner(&octx);
	if (SPI_execute_with_args("INSERT INTO peft.job_rows (adapter, base_model, method, task, "
							  "data, input_column, label_column, options, owner, search_path) "
							  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10) RETURNING id",
							  JOB_NUM_FIELDS, types, values, NULL, false, 1) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not record the job");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &(bool){false}));
	CatalogAsCaller(&octx);
	return id;
}

/* Record a model as the extension owner; returns the peft.models row (survives SPI_finish). */
Datum
CatalogRecordModel(const CatalogModelRow *row)
{
	const PeftModelInfo *info = row->info;
	Oid			types[16] = {TEXTOID, TEXTOID, TEXTOID, INT4OID, INT4OID, INT4OID, INT4OID,
		INT4OID, INT4OID, INT8OID, INT8OID, TEXTOID, TEXTOID, TEXTOID, BOOLOID, TIMESTAMPTZOID};
	Datum		values[16];
	OwnerContext octx;
	bool		mtime;
	Datum		result;

	values[0] = CStringGetTextDatum(row->name);
	values[1] = CStringGetTextDatum(row->path);
	values[2] = CStringGetTextDatum(info->architecture);
	values[3] = Int32GetDatum(info->hidden_size);
	values[4] = Int32GetDatum(info->num_layers);
	values[5] = Int32GetDatum(info->num_heads);
	values[6] = Int32GetDatum(info->intermediate_size);
	values[7] = Int32GetDatum(info->vocab_size);
	values[8] = Int32GetDatum(info->max_position);
	values[9] = Int64GetDatum(info->parameters);
	values[10] = Int64GetDatum(info->file_bytes);
	values[11] = CStringGetTextDatum(row->checksum);
	if (info->decoder)
		values[12] = CStringGetTextDatum(psprintf("{\"decoder\": true, \"source\": \"%s\", "
												  "\"quantization\": \"%s\", \"num_kv_heads\": %d, "
												  "\"context_length\": %d, \"chat_template\": %s}",
												  info->source, info->quantization, info->num_kv_heads,
												  info->max_position,
												  info->chat_template ? "true" : "false"));
	else
		values[12] = CStringGetTextDatum(psprintf("{\"pooling\": \"%s\", \"normalize\": %s, "
												  "\"max_seq_length\": %d, \"weights_dtype\": \"%s\"}",
												  info->pooling, info->normalize ? "true" : "false",
												  info->max_seq_length, info->weights_dtype));
	values[13] = CStringGetTextDatum(GetUserNameFromId(GetUserId(), false));
	values[14] = BoolGetDatum(superuser());
	values[15] = TimestampTzGetDatum(row->file_mtime);

	CatalogAsOwner(&octx);
	/* a database still at 0.1.0 (before ALTER EXTENSION peft UPDATE) has no file_mtime */
	mtime = CatalogHasColumn("models", "file_mtime");
	if (SPI_execute_with_args(psprintf(
							  "INSERT INTO peft.models AS m (name, path, architecture, hidden_size, num_layers, "
							  "  num_heads, intermediate_size, vocab_size, max_position, parameters, "
							  "  file_bytes, checksum, config, owner%s) "
							  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, $14%s) "
							  "ON CONFLICT (name) DO UPDATE SET path = EXCLUDED.path, "
							  "  architecture = EXCLUDED.architecture, hidden_size = EXCLUDED.hidden_size, "
							  "  num_layers = EXCLUDED.num_layers, num_heads = EXCLUDED.num_heads, "
							  "  intermediate_size = EXCLUDED.intermediate_size, "
							  "  vocab_size = EXCLUDED.vocab_size, max_position = EXCLUDED.max_position, "
							  "  parameters = EXCLUDED.parameters, file_bytes = EXCLUDED.file_bytes, "
							  "  checksum = EXCLUDED.checksum, config = EXCLUDED.config, "
							  "  %s"
							  "  created_at = pg_catalog.now() "
							  "WHERE m.owner = EXCLUDED.owner OR $15 "
							  "RETURNING *", mtime ? ", file_mtime" : "", mtime ? ", $16" : "",
							  mtime ? "file_mtime = EXCLUDED.file_mtime, " : ""),
							  16, types, values, NULL, false, 1) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not record the model");
	CatalogAsCaller(&octx);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("model \"%s\" is already registered by another role", row->name)));
	result = PointerGetDatum(SPI_returntuple(SPI_tuptable->vals[0], SPI_tuptable->tupdesc));
	return result;
}

/* ERROR for a missing version of adapter name (0: the active one). */
void
CatalogVersionMissing(const char *name, int version)
{
	if (version == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("adapter \"%s\" does not exist or has no active version", name),
				 errhint("Train one with peft_train, or activate a version with peft_activate.")));
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("adapter \"%s\" has no version %d", name, version)));
}

/*
 * Append an evaluation (a JSON object) to metrics->'evaluations' of adapter
 * name's version, as the owner, after checking the caller's right to the
 * name.  Inside SPI.
 */
void
CatalogRecordEvaluation(const char *name, int version, const char *evaluation)
{
	Oid			types[3] = {TEXTOID, INT4OID, TEXTOID};
	Datum		values[3] = {CStringGetTextDatum(name), Int32GetDatum(version),
	CStringGetTextDatum(evaluation)};
	OwnerContext octx;

	CheckAdapterNameOwner(name, GetUserId());
	CatalogAsOwner(&octx);
	CatalogLockName(name);
	if (SPI_execute_with_args("UPDATE peft.adapters SET metrics = metrics OPERATOR(pg_catalog.||) "
							  "pg_catalog.jsonb_build_object('evaluations', "
							  "  COALESCE(metrics OPERATOR(pg_catalog.->) 'evaluations', '[]'::pg_catalog.jsonb) "
							  "  OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_array($3::jsonb)) "
							  "WHERE name = $1 AND version = $2",
							  3, types, values, NULL, false, 0) != SPI_OK_UPDATE || SPI_processed != 1)
		elog(ERROR, "could not record the evaluation");
	CatalogAsCaller(&octx);
}
