/*
 * serve_protocol.c - the messages between a caller and the serving worker.
 *
 * A request: int32 version, int32 n, string adapter, string row_version,
 * then n texts.  An answer: int32 failed, int32 sqlerrcode, string message,
 * int32 n, then n (label, float8 score).  A string is an int32 length (-1:
 * NULL) and its bytes.  Both ends are processes of one server build, so
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

/* Encode a request into buf. */
void
ServeEncodeRequest(StringInfo buf, const ServeRequest *req)
{
	PutInt(buf, req->version);
	PutInt(buf, req->n);
	PutString(buf, req->adapter);
	PutString(buf, req->row_version);
	for (int i = 0; i < req->n; i++)
		PutString(buf, req->texts[i]);
}

/* Decode a request (palloc'd in the current context); false for a malformed one. */
bool
ServeDecodeRequest(const char *data, Size len, ServeRequest *req)
{
	Reader		r = {data, data + len, true};

	req->version = GetInt(&r);
	req->n = GetInt(&r);
	if (!r.ok || req->n < 0 || req->n > (int) (len / sizeof(int32)))
		return false;
	req->adapter = GetString(&r);
	req->row_version = GetString(&r);
	req->texts = palloc(sizeof(char *) * (req->n + 1));
	for (int i = 0; i < req->n; i++)
		req->texts[i] = GetString(&r);
	return r.ok && req->adapter != NULL && r.p == r.end;
}

/* Encode an answer into buf. */
void
ServeEncodeAnswer(StringInfo buf, const ServeAnswer *ans)
{
	PutInt(buf, ans->failed ? 1 : 0);
	PutInt(buf, ans->sqlerrcode);
	PutString(buf, ans->failed ? ans->message : NULL);
	PutInt(buf, ans->failed ? 0 : ans->n);
	if (ans->failed)
		return;
	for (int i = 0; i < ans->n; i++)
	{
		PutString(buf, ans->labels[i]);
		appendBinaryStringInfo(buf, (const char *) &ans->scores[i], sizeof(double));
	}
}

/* Decode an answer (palloc'd in the current context); false for a malformed one. */
bool
ServeDecodeAnswer(const char *data, Size len, ServeAnswer *ans)
{
	Reader		r = {data, data + len, true};

	ans->failed = GetInt(&r) != 0;
	ans->sqlerrcode = GetInt(&r);
	ans->message = GetString(&r);
	ans->n = GetInt(&r);
	if (!r.ok || ans->n < 0 || ans->n > (int) (len / sizeof(int32)))
		return false;
	ans->labels = palloc(sizeof(char *) * (ans->n + 1));
	ans->scores = palloc0(sizeof(double) * (ans->n + 1));
	for (int i = 0; i < ans->n && r.ok; i++)
	{
		ans->labels[i] = GetString(&r);
		if (r.end - r.p < (long) sizeof(double))
			r.ok = false;
		else
		{
			memcpy(&ans->scores[i], r.p, sizeof(double));
			r.p += sizeof(double);
		}
	}
	return r.ok && r.p == r.end;
}
