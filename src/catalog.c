/*
 * catalog.c - access to peft's catalog tables from C.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "catalog.h"

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
 */
void
CatalogAsOwner(OwnerContext *ctx)
{
	Oid			owner = ExtensionOwner();

	GetUserIdAndSecContext(&ctx->saved_user, &ctx->saved_sec);
	SetUserIdAndSecContext(owner, ctx->saved_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
}

/* Return to the caller's identity. */
void
CatalogAsCaller(const OwnerContext *ctx)
{
	SetUserIdAndSecContext(ctx->saved_user, ctx->saved_sec);
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

	if (SPI_execute_with_args("SELECT name, path, checksum, owner FROM peft.models WHERE name = $1",
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
