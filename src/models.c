/*
 * models.c - peft_register_model: validate a model (a Hugging Face folder,
 * or a GGUF file or a folder holding one) through the engine and record it
 * in peft.models.
 */
#include "postgres.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "access/xlog.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "models.h"
#include "peft.h"

PG_FUNCTION_INFO_V1(peft_register_model);
PG_FUNCTION_INFO_V1(peft_verify_model);

/* Modification time of a stat result as a timestamptz (microseconds). */
static TimestampTz
StatMtime(const struct stat *st)
{
	return time_t_to_timestamptz(st->st_mtim.tv_sec) + st->st_mtim.tv_nsec / 1000;
}

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

/*
 * The weights file of a registered model's path: the path itself when it
 * is a file (a .gguf), else the folder's model.safetensors, else the one
 * .gguf file in the folder.  (When none is there, model.safetensors, whose
 * absence the caller reports.)
 */
static void
ModelWeightsPath(const char *path, char *out, size_t len)
{
	struct stat st;
	DIR		   *dir;
	struct dirent *e;
	int			found = 0;

	if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
	{
		strlcpy(out, path, len);
		return;
	}
	snprintf(out, len, "%s/model.safetensors", path);
	if (stat(out, &st) == 0 || (dir = AllocateDir(path)) == NULL)
		return;
	while ((e = ReadDir(dir, path)) != NULL)
	{
		size_t		n = strlen(e->d_name);

		if (e->d_name[0] != '.' && n > 5 && strcmp(e->d_name + n - 5, ".gguf") == 0 && found++ == 0)
			snprintf(out, len, "%s/%s", path, e->d_name);
	}
	FreeDir(dir);
	if (found != 1)
		snprintf(out, len, "%s/model.safetensors", path);
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
 * The path (a model folder, a .gguf file, or a folder with one) is resolved to its real path (symbolic links and ".." are
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
	char		weights[sizeof(((PeftModelInfo *) 0)->weights_file)];
	const PeftEngineApi *engine;
	PeftModelHandle *model;
	PeftModelInfo info;
	PeftError	err = {0};
	struct stat st;
	CatalogModelRow row;
	Datum		result;

	PeftRequirePrimary("peft_register_model");

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
	if (engine->model_open(resolved, &model, &info, &err) != PEFT_OK)
		PeftRaiseEngineError(&err);
	engine->model_close(model);
	/* the file the engine mapped: model.safetensors, or the .gguf file */
	strlcpy(weights, info.weights_file, sizeof(weights));
	/* the time first: a change while hashing then shows as a newer time */
	if (stat(weights, &st) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat \"%s\": %m", weights)));
	row.name = name;
	row.path = resolved;
	row.info = &info;
	row.checksum = FileSha256(weights);
	row.file_mtime = StatMtime(&st);
	SPI_connect();
	result = CatalogRecordModel(&row);
	SPI_finish();
	PG_RETURN_DATUM(result);
}

/* ERROR naming the model when its folder is missing on this server. */
static void
MissingModelFolder(const CatalogModel *model)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_FILE),
			 errmsg("model \"%s\" is registered at \"%s\", which is missing on this server",
					model->name, model->path),
			 errdetail("The weights are not stored in the database: every server that trains or "
					   "predicts with a model (the primary, each replica, a restored copy) reads "
					   "them from that folder."),
			 errhint("Copy the model folder to that path, keeping modification times (rsync -a, "
					 "cp -p), then check it with SELECT peft_verify_model('%s').", model->name)));
}

/* ERROR unless the model's weights file is the size and age registered. */
void
CheckModelFiles(const CatalogModel *model)
{
	char		weights[MAXPGPATH];
	struct stat st;

	/* a folder, or (a GGUF model) the file itself */
	if (stat(model->path, &st) != 0 || !(S_ISDIR(st.st_mode) || S_ISREG(st.st_mode)))
		MissingModelFolder(model);
	ModelWeightsPath(model->path, weights, sizeof(weights));
	if (stat(weights, &st) != 0)
		MissingModelFolder(model);
	if ((int64) st.st_size != model->file_bytes ||
		(model->has_mtime && StatMtime(&st) != model->file_mtime))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("model \"%s\": \"%s\" changed after it was registered", model->name, weights),
				 (int64) st.st_size != model->file_bytes ?
				 errdetail("It has %lld bytes; %lld were registered.",
						   (long long) st.st_size, (long long) model->file_bytes) :
				 errdetail("Its modification time is %s; %s was registered.",
						   timestamptz_to_str(StatMtime(&st)),
						   timestamptz_to_str(model->file_mtime)),
				 errhint("Restore the registered file, or register the model again with "
						 "peft_register_model if the change is intended.  If only the time "
						 "changed (a copy), SELECT peft_verify_model('%s') checks its SHA-256 and "
						 "records the new time.", model->name)));
}

/*
 * peft_verify_model(name) RETURNS boolean: whether the model's weights on
 * this server have the SHA-256 recorded at registration.  When they do and
 * the modification time differs (a copy made without keeping times), the
 * new time is recorded, so predictions work again; on a standby nothing
 * can be recorded and the answer is all it gives.
 */
Datum
peft_verify_model(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	CatalogModel *model;
	char		weights[MAXPGPATH];
	struct stat st;
	char	   *checksum;
	bool		same;

	SPI_connect();
	model = CatalogGetModel(name);
	ModelWeightsPath(model->path, weights, sizeof(weights));
	if (stat(model->path, &st) != 0 || stat(weights, &st) != 0)
		MissingModelFolder(model);
	checksum = FileSha256(weights);
	same = strcmp(checksum, model->checksum) == 0 && (int64) st.st_size == model->file_bytes;
	if (!same)
		ereport(NOTICE,
				(errmsg("model \"%s\": the SHA-256 of \"%s\" is %s; %s was registered",
						name, weights, checksum, model->checksum)));
	else if ((!model->has_mtime || StatMtime(&st) != model->file_mtime) && !RecoveryInProgress())
	{
		Oid			types[2] = {TEXTOID, TIMESTAMPTZOID};
		Datum		values[2] = {CStringGetTextDatum(name), TimestampTzGetDatum(StatMtime(&st))};
		OwnerContext octx;

		CatalogAsOwner(&octx);
		if (SPI_execute_with_args("UPDATE peft.models SET file_mtime = $2 WHERE name = $1",
								  2, types, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not record the model's modification time");
		CatalogAsCaller(&octx);
	}
	SPI_finish();
	PG_RETURN_BOOL(same);
}
