/*
 * serve_protocol.c - the messages between a caller and the serving worker.
 *
 * A request: int32 kind, then for predict int32 version, int32 n, string
 * adapter, string row_version and n texts; for embed int32 n and n
 * (string adapter, int32 version, string text); for generate the same
 * with string options after n.  An answer: int32 failed, int32
 * sqlerrcode, string message, int32 n, then for predict n (label, float8
 * score), for embed int32 dim and n x dim float4, for generate n (string
 * completion, int32 tokens, int32 finish).  A string is an int32 length
 * (-1: NULL) and its bytes.  Both ends are processes of one server build, so
 * numbers travel in native byte order; lengths are still checked against
 * the message, so a torn message is refused rather than read past its end.
 */
#include "postgres.h"

#include "serve.h"

/* A cursor over a received message. */
typedef struct Reader
{
	const char *p;
	const char *end;
	bool		ok;
} Reader;

/* Append an int32. */
static void
PutInt(StringInfo buf, int32 v)
{
	appendBinaryStringInfo(buf, (const char *) &v, sizeof(v));
}

/* Append a string (NULL allowed). */
static void
PutString(StringInfo buf, const char *s)
{
	int32		len = s ? (int32) strlen(s) : -1;

	PutInt(buf, len);
	if (s)
		appendBinaryStringInfo(buf, s, len);
}

/* Read an int32 (0 and ok = false past the end). */
static int32
GetInt(Reader *r)
{
	int32		v;

	if (!r->ok || r->end - r->p < (long) sizeof(v))
	{
		r->ok = false;
		return 0;
	}
	memcpy(&v, r->p, sizeof(v));
	r->p += sizeof(v);
	return v;
}

/* Read a string into a palloc'd copy (NULL for a NULL string or a torn message). */
static char *
GetString(Reader *r)
{
	int32		len = GetInt(r);
	char	   *s;

	if (!r->ok || len < 0)
		return NULL;
	if (r->end - r->p < len)
	{
		r->ok = false;
		return NULL;
	}
	s = palloc(len + 1);
	memcpy(s, r->p, len);
	s[len] = '\0';
	r->p += len;
	return s;
}

/* Copy len bytes into out (ok = false past the end). */
static void
GetBytes(Reader *r, void *out, Size len)
{
	if (!r->ok || (Size) (r->end - r->p) < len)
	{
		r->ok = false;
		return;
	}
	memcpy(out, r->p, len);
	r->p += len;
}

/* A count read from r, refused (ok = false) when negative or more than the message's bytes could hold. */
static int
GetCount(Reader *r, Size len)
{
	int			n = GetInt(r);

	if (n < 0 || n > (int) (len / sizeof(int32)))
		r->ok = false;
	return r->ok ? n : 0;
}

/* Encode a request into buf. */
void
ServeEncodeRequest(StringInfo buf, const ServeRequest *req)
{
	PutInt(buf, req->kind);
	if (req->kind == SERVE_PREDICT)
	{
		PutInt(buf, req->version);
		PutInt(buf, req->n);
		PutString(buf, req->adapter);
		PutString(buf, req->row_version);
		for (int i = 0; i < req->n; i++)
			PutString(buf, req->texts[i]);
		return;
	}
	PutInt(buf, req->n);
	if (req->kind == SERVE_GENERATE)
		PutString(buf, req->options);
	for (int i = 0; i < req->n; i++)
	{
		PutString(buf, req->adapters[i]);
		PutInt(buf, req->versions[i]);
		PutString(buf, req->texts[i]);
	}
}

/* Decode a request (palloc'd in the current context); false for a malformed one. */
bool
ServeDecodeRequest(const char *data, Size len, ServeRequest *req)
{
	Reader		r = {data, data + len, true};

	memset(req, 0, sizeof(*req));
	req->kind = GetInt(&r);
	if (req->kind == SERVE_PREDICT)
	{
		req->version = GetInt(&r);
		req->n = GetCount(&r, len);
		if (!r.ok)
			return false;
		req->adapter = GetString(&r);
		req->row_version = GetString(&r);
		req->texts = palloc(sizeof(char *) * (req->n + 1));
		for (int i = 0; i < req->n; i++)
			req->texts[i] = GetString(&r);
		return r.ok && req->adapter != NULL && r.p == r.end;
	}
	if (req->kind != SERVE_EMBED && req->kind != SERVE_GENERATE)
		return false;
	req->n = GetCount(&r, len);
	if (!r.ok)
		return false;
	if (req->kind == SERVE_GENERATE && (req->options = GetString(&r)) == NULL)
		return false;
	req->texts = palloc(sizeof(char *) * (req->n + 1));
	req->adapters = palloc(sizeof(char *) * (req->n + 1));
	req->versions = palloc(sizeof(int) * (req->n + 1));
	for (int i = 0; i < req->n && r.ok; i++)
	{
		req->adapters[i] = GetString(&r);
		req->versions[i] = GetInt(&r);
		if ((req->texts[i] = GetString(&r)) == NULL)
			r.ok = false;
	}
	return r.ok && r.p == r.end;
}

/* Encode the answer to a request of kind into buf. */
void
ServeEncodeAnswer(StringInfo buf, ServeKind kind, const ServeAnswer *ans)
{
	PutInt(buf, ans->failed ? 1 : 0);
	PutInt(buf, ans->sqlerrcode);
	PutString(buf, ans->failed ? ans->message : NULL);
	PutInt(buf, ans->failed ? 0 : ans->n);
	if (ans->failed)
		return;
	if (kind == SERVE_EMBED)
	{
		PutInt(buf, ans->dim);
		appendBinaryStringInfo(buf, (const char *) ans->vectors, sizeof(float) * (Size) ans->n * ans->dim);
		return;
	}
	for (int i = 0; i < ans->n; i++)
	{
		if (kind == SERVE_GENERATE)
		{
			PutString(buf, ans->completions[i]);
			PutInt(buf, ans->tokens[i]);
			PutInt(buf, ans->finish[i]);
			continue;
		}
		PutString(buf, ans->labels[i]);
		appendBinaryStringInfo(buf, (const char *) &ans->scores[i], sizeof(double));
	}
}

/* Decode the answer to a request of kind (palloc'd in the current context); false for a malformed one. */
bool
ServeDecodeAnswer(const char *data, Size len, ServeKind kind, ServeAnswer *ans)
{
	Reader		r = {data, data + len, true};

	memset(ans, 0, sizeof(*ans));
	ans->failed = GetInt(&r) != 0;
	ans->sqlerrcode = GetInt(&r);
	ans->message = GetString(&r);
	ans->n = GetCount(&r, len);
	if (!r.ok)
		return false;
	if (ans->failed)
		return r.p == r.end;
	if (kind == SERVE_EMBED)
	{
		ans->dim = GetCount(&r, len);
		if (!r.ok || (ans->dim > 0 && (Size) ans->n > (len / sizeof(float)) / ans->dim))
			return false;
		ans->vectors = palloc(sizeof(float) * ((Size) ans->n * ans->dim + 1));
		GetBytes(&r, ans->vectors, sizeof(float) * (Size) ans->n * ans->dim);
		return r.ok && r.p == r.end;
	}
	if (kind == SERVE_GENERATE)
	{
		ans->completions = palloc0(sizeof(char *) * (ans->n + 1));
		ans->tokens = palloc0(sizeof(int) * (ans->n + 1));
		ans->finish = palloc0(sizeof(int) * (ans->n + 1));
	}
	else
	{
		ans->labels = palloc0(sizeof(char *) * (ans->n + 1));
		ans->scores = palloc0(sizeof(double) * (ans->n + 1));
	}
	for (int i = 0; i < ans->n && r.ok; i++)
	{
		if (kind == SERVE_GENERATE)
		{
			if ((ans->completions[i] = GetString(&r)) == NULL)
				r.ok = false;
			ans->tokens[i] = GetInt(&r);
			ans->finish[i] = GetInt(&r);
			continue;
		}
		ans->labels[i] = GetString(&r);
		GetBytes(&r, &ans->scores[i], sizeof(double));
	}
	return r.ok && r.p == r.end;
}
