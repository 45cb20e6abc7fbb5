/*
 * adapters.c - adapter versions: peft_activate and peft_drop_adapter.
 *
 * A role may act only on adapters it can see through row-level security
 * (its own, those of roles it belongs to; superusers all), so each function
 * first selects the rows as the caller and then writes as the owner.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "catalog.h"
#include "peft.h"

PG_FUNCTION_INFO_V1(peft_activate);
PG_FUNCTION_INFO_V1(peft_drop_adapter);

/* Number of versions of name the caller can see (version NULL: all). */
static int64
VisibleVersions(const char *name, bool all, int version)
{
	Oid			types[3] = {TEXTOID, BOOLOID, INT4OID};
	Datum		values[3] = {CStringGetTextDatum(name), BoolGetDatum(all), Int32GetDatum(version)};

	if (SPI_execute_with_args("SELECT 1 FROM peft.adapters WHERE name = $1 AND ($2 OR version = $3)",
							  3, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read peft.adapters");
	return (int64) SPI_processed;
}

/* peft_activate(adapter, version): make that version the one predictions use. */
Datum
peft_activate(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			version = PG_GETARG_INT32(1);
	Oid			types[2] = {TEXTOID, INT4OID};
	Datum		values[2] = {CStringGetTextDatum(name), Int32GetDatum(version)};
	OwnerContext octx;

	PeftRequirePrimary("peft_activate");

	SPI_connect();
	if (VisibleVersions(name, false, version) == 0)
		CatalogVersionMissing(name, version);
	/* the deactivation below would otherwise reach another role's version */
	CheckAdapterNameOwner(name, GetUserId());
	CatalogAsOwner(&octx);
	/* deactivate first: the unique index allows one active version per name */
	if (SPI_execute_with_args("UPDATE peft.adapters SET active = false WHERE name = $1 AND active",
							  1, types, values, NULL, false, 0) < 0 ||
		SPI_execute_with_args("UPDATE peft.adapters SET active = true WHERE name = $1 AND version = $2",
							  2, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not activate the adapter");
	CatalogAsCaller(&octx);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * peft_drop_adapter(adapter, version DEFAULT NULL) RETURNS int: delete one
 * version, or every version; returns how many were deleted.  Dropping the
 * active version activates the newest remaining one, so predictions keep
 * working (a NOTICE says which); dropping the last says the adapter is gone.
 */
Datum
peft_drop_adapter(PG_FUNCTION_ARGS)
{
	char	   *name;
	bool		all = PG_ARGISNULL(1);
	int			version = all ? 0 : PG_GETARG_INT32(1);
	int64		visible;
	int64		remaining;
	int			activated;
	int			dropped;

	PeftRequirePrimary("peft_drop_adapter");

	/* not STRICT: a NULL version means every version; the name has no NULL meaning */
	PeftRequireArg(fcinfo, 0, "adapter");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	SPI_connect();
	visible = VisibleVersions(name, all, version);
	if (visible == 0 && all)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("adapter \"%s\" does not exist", name)));
	if (visible == 0)
		CatalogVersionMissing(name, version);
	/* the DELETE below runs as the owner and would reach versions the caller cannot see */
	CheckAdapterNameOwner(name, GetUserId());
	dropped = CatalogDropVersions(name, all, version, &activated, &remaining);
	SPI_finish();
	if (activated > 0)
		ereport(NOTICE,
				(errmsg("version %d of adapter \"%s\" is now active", activated, name),
				 errdetail("The dropped version %d was the active one; the newest remaining version takes its place.",
						   version)));
	else if (remaining == 0)
		ereport(NOTICE,
				(errmsg("adapter \"%s\" has no versions left: it is gone", name)));
	PG_RETURN_INT32((int32) dropped);
}
