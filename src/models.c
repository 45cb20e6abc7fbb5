/*
 * models.c - peft_register_model: validate a Hugging Face model folder
 * through the engine and record it in peft.models.
 */
#include "postgres.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"

#include "catalog.h"
#include "peft.h"

PG_FUNCTION_INFO_V1(peft_register_model);

/* Hex SHA-256 of a file, read in chunks with interrupts checked. */
static char *
FileSha256(const char *path)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);
	uint8		digest[32];
	char	   *hex = palloc(65);
	char	   *buf = palloc(1 << 20);
	int			fd = open(path, O_RDONLY);
	ssize_t		n;

	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open \"%s\": %m", path)));
	if (ctx == NULL || pg_cryptohash_init(ctx) < 0)
		elog(ERROR, "could not initialise SHA-256");
	while ((n = read(fd, buf, 1 << 20)) > 0)
	{
		CHECK_FOR_INTERRUPTS();
		if (pg_cryptohash_update(ctx, (uint8 *) buf, n) < 0)
			elog(ERROR, "could not compute SHA-256");
	}
	close(fd);
	if (n < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read \"%s\": %m", path)));
	if (pg_cryptohash_final(ctx, digest, sizeof(digest)) < 0)
		elog(ERROR, "could not compute SHA-256");
	pg_cryptohash_free(ctx);
	hex_encode((char *) digest, sizeof(digest), hex);
	hex[64] = '\0';
	pfree(buf);
	return hex;
}

/* Only superusers and members of pg_read_server_files may point at server files. */
static void
CheckRegisterPrivilege(void)
{
	if (!superuser() && !has_privs_of_role(GetUserId(), ROLE_PG_READ_SERVER_FILES))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to register a model"),
				 errdetail("Registering reads files on the database server."),
				 errhint("Only superusers and roles with the privileges of pg_read_server_files may register models.")));
}

/*
 * peft_register_model(name, path) RETURNS peft.models
 *
 * The folder is resolved to its real path (symbolic links and ".." are
 * followed, and the resolved path is what is stored), validated by the
 * engine, checksummed, and recorded.  Registering an existing name again
 * updates it, if the caller owns it.
 */
Datum
peft_register_model(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *given = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char		resolved[PATH_MAX];
	char		weights[PATH_MAX + 32];
	const PeftEngineApi *engine;
	PeftModelHandle *model;
	PeftModelInfo info;
	PeftError	err = {0};
	PeftCode	rc;
	char	   *checksum;
	char	   *config;
	OwnerContext octx;
	Oid			types[15] = {TEXTOID, TEXTOID, TEXTOID, INT4OID, INT4OID, INT4OID, INT4OID,
		INT4OID, INT4OID, INT8OID, INT8OID, TEXTOID, TEXTOID, TEXTOID, BOOLOID};
	Datum		values[15];
	Datum		result;

	CheckRegisterPrivilege();
	CheckCatalogName("model", name);
	if (!is_absolute_path(given))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model path must be absolute: \"%s\"", given)));
	if (realpath(given, resolved) == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not resolve model folder \"%s\": %m", given)));

	engine = PeftEngine();
	rc = engine->model_open(resolved, &model, &info, &err);
	if (rc != PEFT_OK)
		PeftRaiseEngineError(&err);
	engine->model_close(model);

	snprintf(weights, sizeof(weights), "%s/model.safetensors", resolved);
	checksum = FileSha256(weights);
	config = psprintf("{\"pooling\": \"%s\", \"normalize\": %s, \"max_seq_length\": %d, "
					  "\"weights_dtype\": \"%s\"}", info.pooling,
					  info.normalize ? "true" : "false", info.max_seq_length,
					  info.weights_dtype);

	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(resolved);
	values[2] = CStringGetTextDatum(info.architecture);
	values[3] = Int32GetDatum(info.hidden_size);
	values[4] = Int32GetDatum(info.num_layers);
	values[5] = Int32GetDatum(info.num_heads);
	values[6] = Int32GetDatum(info.intermediate_size);
	values[7] = Int32GetDatum(info.vocab_size);
	values[8] = Int32GetDatum(info.max_position);
	values[9] = Int64GetDatum(info.parameters);
	values[10] = Int64GetDatum(info.file_bytes);
	values[11] = CStringGetTextDatum(checksum);
	values[12] = CStringGetTextDatum(config);
	values[13] = CStringGetTextDatum(GetUserNameFromId(GetUserId(), false));
	values[14] = BoolGetDatum(superuser());

	SPI_connect();
	CatalogAsOwner(&octx);
	if (SPI_execute_with_args(
							  "INSERT INTO peft.models AS m (name, path, architecture, hidden_size, num_layers, "
							  "  num_heads, intermediate_size, vocab_size, max_position, parameters, "
							  "  file_bytes, checksum, config, owner) "
							  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, $14) "
							  "ON CONFLICT (name) DO UPDATE SET path = EXCLUDED.path, "
							  "  architecture = EXCLUDED.architecture, hidden_size = EXCLUDED.hidden_size, "
							  "  num_layers = EXCLUDED.num_layers, num_heads = EXCLUDED.num_heads, "
							  "  intermediate_size = EXCLUDED.intermediate_size, "
							  "  vocab_size = EXCLUDED.vocab_size, max_position = EXCLUDED.max_position, "
							  "  parameters = EXCLUDED.parameters, file_bytes = EXCLUDED.file_bytes, "
							  "  checksum = EXCLUDED.checksum, config = EXCLUDED.config, "
							  "  created_at = pg_catalog.now() "
							  "WHERE m.owner = EXCLUDED.owner OR $15 "
							  "RETURNING *",
							  15, types, values, NULL, false, 1) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not record the model");
	CatalogAsCaller(&octx);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("model \"%s\" is already registered by another role", name)));

	result = PointerGetDatum(SPI_returntuple(SPI_tuptable->vals[0], SPI_tuptable->tupdesc));
	SPI_finish();
	PG_RETURN_DATUM(result);
}
