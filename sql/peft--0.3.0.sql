-- peft 0.3.0: catalog and SQL surface, for CREATE EXTENSION peft.
-- Installed databases reach the same state by ALTER EXTENSION peft UPDATE
-- through sql/peft--0.1.0--0.2.0.sql and sql/peft--0.2.0--0.3.0.sql: every
-- change made here is made there too (test/t/012_upgrade.pl checks that
-- both end alike).  The scripts of released versions (peft--0.1.0.sql,
-- peft--0.2.0.sql) are never edited.

\echo Use "CREATE EXTENSION peft" to load this file. \quit

CREATE SCHEMA peft;
COMMENT ON SCHEMA peft IS 'peft catalog: base models, adapter versions, training jobs';

-- Base models: Hugging Face folders validated by the engine.
CREATE TABLE peft.models (
    name              text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,63}$'),
    path              text NOT NULL,
    architecture      text NOT NULL,
    hidden_size       int NOT NULL,
    num_layers        int NOT NULL,
    num_heads         int NOT NULL,
    intermediate_size int NOT NULL,
    vocab_size        int NOT NULL,
    max_position      int NOT NULL,
    parameters        bigint NOT NULL,
    file_bytes        bigint NOT NULL,
    checksum          text NOT NULL,
    config            jsonb NOT NULL DEFAULT '{}',
    owner             name NOT NULL DEFAULT current_user,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- 0.2.0; last, where ALTER TABLE ADD COLUMN puts it in updated databases
    file_mtime        timestamptz
);
COMMENT ON TABLE peft.models IS 'registered base models (peft_register_model)';
COMMENT ON COLUMN peft.models.file_bytes IS 'size of the weights file (model.safetensors or the .gguf file) when registered';
COMMENT ON COLUMN peft.models.checksum IS 'SHA-256 of the weights file when registered';
COMMENT ON COLUMN peft.models.file_mtime IS 'modification time of the weights file when registered or last verified (NULL: registered before 0.2.0 and not verified since)';

-- Training jobs: one row per peft_train call; the worker commits progress
-- here in short transactions.  Read them through the view peft.jobs.
CREATE TABLE peft.job_rows (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    adapter            text NOT NULL,
    base_model         text NOT NULL,
    method             text NOT NULL DEFAULT 'lora',
    task               text NOT NULL DEFAULT 'classification'
                       CHECK (task IN ('classification', 'regression', 'generation')),
    data               text NOT NULL,
    input_column       text NOT NULL,
    label_column       text NOT NULL,
    options            jsonb NOT NULL DEFAULT '{}',
    owner              name NOT NULL DEFAULT current_user,
    search_path        text NOT NULL DEFAULT '',
    status             text NOT NULL DEFAULT 'queued'
                       CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    progress           real NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 1),
    epoch              int,
    step               int,
    total_steps        int,
    loss               float8,
    samples_per_second float8,
    eta                interval,
    loss_history       float8[] NOT NULL DEFAULT '{}',
    metrics            jsonb NOT NULL DEFAULT '{}',
    error              text,
    cancel_requested   boolean NOT NULL DEFAULT false,
    worker_pid         int,
    worker_started     timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    finished_at        timestamptz,
    loss_steps         int[] NOT NULL DEFAULT '{}',
    lr_history         float8[] NOT NULL DEFAULT '{}'
);
CREATE INDEX job_rows_status_idx ON peft.job_rows (status) WHERE status IN ('queued', 'running');
COMMENT ON TABLE peft.job_rows IS 'training jobs as the workers record them; read peft.jobs';

-- True while the worker process with this pid and start time still runs.
CREATE FUNCTION peft._worker_alive(pid int, started timestamptz) RETURNS boolean
    AS 'MODULE_PATHNAME', 'peft_worker_alive'
    LANGUAGE C STABLE PARALLEL SAFE;

-- When the server last started or, after a crash restart, reinitialised
-- (pg_postmaster_start_time() does not move on a crash restart).
CREATE FUNCTION peft._server_started() RETURNS timestamptz
    AS 'MODULE_PATHNAME', 'peft_server_started'
    LANGUAGE C STABLE PARALLEL SAFE;

-- A job whose worker vanished (crash, kill -9, immediate shutdown) is shown
-- as failed at once, whoever looks, even before anything repairs its row;
-- so is a queued job whose worker never started before the server
-- restarted or crash-restarted (dynamic workers survive neither).
CREATE FUNCTION peft._job_lost(status text, worker_pid int, worker_started timestamptz,
                               created_at timestamptz) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT status IN ('queued', 'running')
           AND CASE WHEN worker_pid IS NULL THEN created_at < peft._server_started()
                    ELSE NOT peft._worker_alive(worker_pid, worker_started) END
    $$;

-- A one-line Unicode sparkline of values (at most 60 of the block characters
-- U+2581..U+2588, each the mean of its share of the values), so psql shows a
-- loss curve in a column; NULL in a database whose encoding is not UTF8.
CREATE FUNCTION peft._sparkline(v float8[]) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
    WITH points AS (
        SELECT x, ordinality AS i, cardinality(v) AS n FROM unnest(v) WITH ORDINALITY AS u(x)
        WHERE x = x AND x < 'Infinity' AND x > '-Infinity'),
    buckets AS (
        SELECT (i - 1) * least(n, 60) / n AS b, avg(x) AS y FROM points GROUP BY 1),
    range AS (SELECT min(y) AS lo, max(y) AS hi FROM buckets)
    SELECT string_agg(chr(9601 + CASE WHEN hi > lo THEN least(7, floor((y - lo) / (hi - lo) * 8))::int
                                      ELSE 0 END), '' ORDER BY b)
    FROM buckets, range
    WHERE pg_catalog.getdatabaseencoding() = 'UTF8'
    $$;

CREATE VIEW peft.jobs WITH (security_invoker = true) AS
SELECT j.id, j.adapter, j.base_model, j.method, j.task, j.data, j.input_column,
       j.label_column, j.options, j.owner,
       CASE WHEN peft._job_lost(j.status, j.worker_pid, j.worker_started, j.created_at)
            THEN 'failed' ELSE j.status END AS status,
       j.progress, j.epoch, j.step, j.total_steps, j.loss, j.samples_per_second,
       j.eta, j.loss_history, j.metrics,
       CASE WHEN peft._job_lost(j.status, j.worker_pid, j.worker_started, j.created_at)
            THEN 'the training worker ended without finishing (server crash, restart or termination)'
            ELSE j.error END AS error,
       j.worker_pid, j.created_at, j.started_at, j.finished_at,
       j.loss_steps, j.lr_history, peft._sparkline(j.loss_history) AS loss_sparkline
FROM peft.job_rows j;
COMMENT ON VIEW peft.jobs IS 'training jobs and their live progress';
COMMENT ON COLUMN peft.jobs.loss_history IS 'training loss per optimizer step (the steps in loss_steps), thinned evenly to at most 1,000 points';
COMMENT ON COLUMN peft.jobs.loss_steps IS 'the optimizer step of each loss_history point';
COMMENT ON COLUMN peft.jobs.lr_history IS 'the learning rate of each loss_history point';
COMMENT ON COLUMN peft.jobs.loss_sparkline IS 'loss_history as a one-line sparkline';
COMMENT ON COLUMN peft.jobs.metrics IS 'validation metrics after each epoch';

-- Adapters: every trained or imported version is a row; weights are
-- safetensors bytes with Hugging Face PEFT tensor names.
CREATE TABLE peft.adapters (
    name        text NOT NULL CHECK (name ~ '^[A-Za-z0-9_.-]{1,63}$'),
    version     int NOT NULL CHECK (version >= 1),
    base_model  text NOT NULL REFERENCES peft.models (name) ON UPDATE CASCADE,
    method      text NOT NULL,
    task        text NOT NULL CHECK (task IN ('classification', 'regression', 'embedding', 'generation')),
    config      jsonb NOT NULL,
    labels      text[],
    weights     bytea NOT NULL,
    metrics     jsonb NOT NULL DEFAULT '{}',
    job         bigint,
    owner       name NOT NULL DEFAULT current_user,
    created_at  timestamptz NOT NULL DEFAULT now(),
    active      boolean NOT NULL DEFAULT false,
    merged      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (name, version)
);
CREATE UNIQUE INDEX adapters_one_active_idx ON peft.adapters (name) WHERE active;
COMMENT ON TABLE peft.adapters IS 'adapter versions; at most one active version per name';

-- Catalog rows are user data: pg_dump must dump them.
SELECT pg_catalog.pg_extension_config_dump('peft.models', '');
SELECT pg_catalog.pg_extension_config_dump('peft.adapters', '');
SELECT pg_catalog.pg_extension_config_dump('peft.job_rows', '');
-- ... and the identity sequence of job ids, or a restored database would
-- number new jobs from 1 again and collide with the restored rows.
SELECT pg_catalog.pg_extension_config_dump('peft.job_rows_id_seq', '');

-- Everyone may read the catalog; row-level security shows each role its
-- own rows (and those of roles it belongs to).  Writes go through the
-- functions only.  owner is a role name, and the role may have been dropped
-- since: pg_has_role(current_user, owner, ...) then raised "role does not
-- exist" for every ordinary role reading the table, so the name is looked up
-- with to_regrole, and a row of a dropped role is shown to superusers only.
ALTER TABLE peft.job_rows ENABLE ROW LEVEL SECURITY;
ALTER TABLE peft.adapters ENABLE ROW LEVEL SECURITY;
CREATE POLICY jobs_owner ON peft.job_rows
    USING (pg_catalog.pg_has_role(current_user,
           pg_catalog.to_regrole(pg_catalog.quote_ident(owner)), 'MEMBER'));
CREATE POLICY adapters_owner ON peft.adapters
    USING (pg_catalog.pg_has_role(current_user,
           pg_catalog.to_regrole(pg_catalog.quote_ident(owner)), 'MEMBER'));
GRANT USAGE ON SCHEMA peft TO PUBLIC;
GRANT SELECT ON peft.models, peft.job_rows, peft.jobs, peft.adapters TO PUBLIC;

-- Adapter versions as people read them: everything but the weights (a
-- SELECT * of peft.adapters prints megabytes of hex), with the headline
-- validation metrics of the version's training job.
CREATE VIEW peft.adapter_versions WITH (security_invoker = true) AS
SELECT a.name, a.version, a.active, a.base_model, a.method, a.task, a.labels,
       (a.metrics->'final'->>'accuracy')::float8 AS accuracy,
       (a.metrics->'final'->>'macro_f1')::float8 AS macro_f1,
       (a.metrics->'final'->>'r2')::float8 AS r2,
       (a.metrics->'final'->>'mae')::float8 AS mae,
       (a.metrics->'final'->>'perplexity')::float8 AS perplexity,
       (a.metrics->'final'->>'exact_match')::float8 AS exact_match,
       (a.metrics->>'train_rows')::bigint AS train_rows,
       (a.metrics->>'valid_rows')::bigint AS valid_rows,
       (a.metrics->>'parameters')::bigint AS parameters,
       pg_catalog.octet_length(a.weights)::bigint AS weights_bytes,
       a.merged, a.job, a.owner, a.created_at
FROM peft.adapters a;
COMMENT ON VIEW peft.adapter_versions IS 'adapter versions without their weights, with headline validation metrics';
COMMENT ON COLUMN peft.adapter_versions.accuracy IS 'classification: validation accuracy after training (NULL for imported versions)';
COMMENT ON COLUMN peft.adapter_versions.parameters IS 'trainable parameters of the adapter and head';
GRANT SELECT ON peft.adapter_versions TO PUBLIC;

-- Version of the SQL layer (does not load the engine).
CREATE FUNCTION peft_version() RETURNS text
    AS 'MODULE_PATHNAME', 'peft_version'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- Load the engine in this backend and describe it: version, backends, threads, CUDA devices.
CREATE FUNCTION peft_engine_info() RETURNS jsonb
    AS 'MODULE_PATHNAME', 'peft_engine_info'
    LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

-- Register a Hugging Face model folder on the server (superusers and
-- members of pg_read_server_files).
CREATE FUNCTION peft_register_model(name text, path text) RETURNS peft.models
    AS 'MODULE_PATHNAME', 'peft_register_model'
    LANGUAGE C VOLATILE STRICT;

-- Whether the model's weights on this server still have the registered
-- SHA-256 (records their modification time when only that changed).
CREATE FUNCTION peft_verify_model(name text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'peft_verify_model'
    LANGUAGE C VOLATILE STRICT;

-- Train an adapter in a background worker; returns the job id.
CREATE FUNCTION peft_train(adapter text, base_model text, data text,
                           input text DEFAULT 'input', label text DEFAULT 'label',
                           task text DEFAULT 'classification',
                           method text DEFAULT 'lora',
                           options jsonb DEFAULT '{}',
                           wait boolean DEFAULT false) RETURNS bigint
    AS 'MODULE_PATHNAME', 'peft_train'
    LANGUAGE C VOLATILE STRICT;

-- Block until a job ends; returns its row (raises the job's error if it failed).
CREATE FUNCTION peft_wait(job bigint) RETURNS peft.jobs
    AS 'MODULE_PATHNAME', 'peft_wait'
    LANGUAGE C VOLATILE STRICT;

-- Stop a queued or running job.
CREATE FUNCTION peft_cancel(job bigint) RETURNS boolean
    AS 'MODULE_PATHNAME', 'peft_cancel'
    LANGUAGE C VOLATILE STRICT;

-- Make a version the one predictions use.
CREATE FUNCTION peft_activate(adapter text, version int) RETURNS void
    AS 'MODULE_PATHNAME', 'peft_activate'
    LANGUAGE C VOLATILE STRICT;

-- Delete one version, or all versions, of an adapter; returns how many.
CREATE FUNCTION peft_drop_adapter(adapter text, version int DEFAULT NULL) RETURNS int
    AS 'MODULE_PATHNAME', 'peft_drop_adapter'
    LANGUAGE C VOLATILE CALLED ON NULL INPUT;

-- Score one text with the active version of an adapter.
-- A NULL input gives one row of NULLs (as a NULL element of the array form).
CREATE FUNCTION peft_predict(adapter text, input text)
    RETURNS TABLE(label text, score float8)
    AS 'MODULE_PATHNAME', 'peft_predict'
    LANGUAGE C VOLATILE CALLED ON NULL INPUT ROWS 1;

-- Score many texts in batches; ord is the 1-based position in inputs.
CREATE FUNCTION peft_predict(adapter text, inputs text[])
    RETURNS TABLE(ord int, label text, score float8)
    AS 'MODULE_PATHNAME', 'peft_predict_array'
    LANGUAGE C VOLATILE STRICT;

-- Sentence embedding of a text (pooling and normalisation as the model says).
CREATE FUNCTION peft_embed(model text, input text, adapter text DEFAULT NULL) RETURNS real[]
    AS 'MODULE_PATHNAME', 'peft_embed'
    LANGUAGE C VOLATILE CALLED ON NULL INPUT;

-- Sentence embeddings of many texts in batches; ord is the 1-based position
-- in inputs (a NULL element: a NULL embedding).
CREATE FUNCTION peft_embed(model text, inputs text[], adapter text DEFAULT NULL)
    RETURNS TABLE(ord int, embedding real[])
    AS 'MODULE_PATHNAME', 'peft_embed_array'
    LANGUAGE C VOLATILE CALLED ON NULL INPUT;

-- Text completion by a registered decoder (a LLaMA-family model from GGUF
-- or safetensors).  With a chat template (option chat, default true when
-- the model has one) the prompt is the user's turn.  Options: max_new_tokens
-- (128), temperature (0: greedy), top_k, top_p, seed, stop (a string or an
-- array of them), chat, system.  A NULL prompt gives NULL; adapter NULL is
-- the base model; with an adapter (its active version, trained with task
-- 'generation') model may be NULL: then the adapter's base model.
CREATE FUNCTION peft_generate(model text, prompt text, adapter text DEFAULT NULL,
                              options jsonb DEFAULT '{}') RETURNS text
    AS 'MODULE_PATHNAME', 'peft_generate'
    LANGUAGE C VOLATILE CALLED ON NULL INPUT;

-- Completions of many prompts decoded together; ord is the 1-based position
-- in prompts (a NULL element: a row of NULLs); finish_reason 'stop' (end of
-- sequence or a stop string) or 'length' (max_new_tokens or the context).
CREATE FUNCTION peft_generate(model text, prompts text[], adapter text DEFAULT NULL,
                              options jsonb DEFAULT '{}')
    RETURNS TABLE(ord int, completion text, tokens int, finish_reason text)
    AS 'MODULE_PATHNAME', 'peft_generate_array'
    LANGUAGE C VOLATILE CALLED ON NULL INPUT;

-- Mixed-adapter batches (S-LoRA's): input i through the active version of
-- adapters[i], every adapter over one base model.  The base model's
-- products run once over the rows of many adapters; each adapter's method
-- and head on its own rows.  Every adapter is looked up as the caller
-- before anything is computed.  A NULL input gives a row of NULLs; a NULL
-- adapter is an error.
CREATE FUNCTION peft_predict(adapters text[], inputs text[])
    RETURNS TABLE(ord int, adapter text, label text, score float8)
    AS 'MODULE_PATHNAME', 'peft_predict_mixed'
    LANGUAGE C VOLATILE STRICT;

-- Sentence embeddings of input i through adapters[i] (NULL: the bare
-- model), in shared forward passes.  No default for adapters:
-- peft_embed(model, inputs) is the one-adapter form.
CREATE FUNCTION peft_embed(model text, inputs text[], adapters text[])
    RETURNS TABLE(ord int, embedding real[])
    AS 'MODULE_PATHNAME', 'peft_embed_mixed'
    LANGUAGE C VOLATILE STRICT;

-- Completions of prompt i through adapters[i] (NULL: the base model), every
-- adapter over model; each adapter's prompts are decoded together.
CREATE FUNCTION peft_generate(model text, prompts text[], adapters text[],
                              options jsonb DEFAULT '{}')
    RETURNS TABLE(ord int, adapter text, completion text, tokens int, finish_reason text)
    AS 'MODULE_PATHNAME', 'peft_generate_mixed'
    LANGUAGE C VOLATILE STRICT;

-- The adapters this connection keeps parsed (peft.adapter_cache_size),
-- most recently used first, and the bytes each holds.
CREATE FUNCTION peft_adapter_cache() RETURNS TABLE(adapter text, version int, bytes bigint)
    AS 'MODULE_PATHNAME', 'peft_adapter_cache'
    LANGUAGE C VOLATILE STRICT;

-- The metrics of an adapter's task on the rows of a table or query (read as
-- the caller, like peft_train's data): classification accuracy, macro-F1,
-- per-class precision, recall, F1 and support, and the confusion matrix;
-- regression MSE, MAE and R^2.  version NULL: the active one.  record
-- appends the result, with the data, to the version's metrics->'evaluations'.
CREATE FUNCTION peft_evaluate(adapter text, data text, input text DEFAULT 'input',
                              label text DEFAULT 'label', version int DEFAULT NULL,
                              record boolean DEFAULT false) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'peft_evaluate'
    LANGUAGE C VOLATILE CALLED ON NULL INPUT;

-- Every row of a table or query predicted in batches, keyed by its key column.
CREATE FUNCTION peft_score(adapter text, data text, key text, input text DEFAULT 'input')
    RETURNS TABLE(key text, label text, score float8)
    AS 'MODULE_PATHNAME', 'peft_score'
    LANGUAGE C VOLATILE STRICT;

-- Cosine similarity of two vectors, in double precision; NULL when either is all zeros.
CREATE FUNCTION peft_cosine(a real[], b real[]) RETURNS float8
    AS 'MODULE_PATHNAME', 'peft_cosine'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- Hugging Face PEFT interchange.  An adapter's weights are the bytes of
-- adapter_model.safetensors, its config the contents of adapter_config.json
-- (for LoRA, DoRA, LoRA/DoRA + BitFit as bias "all", and (IA)^3, exactly what
-- PEFT reads).  Read as the caller: row-level security applies.
-- The row of a version of an adapter (the active one when version is NULL),
-- as the caller sees it; an error when there is none.
CREATE FUNCTION peft._adapter_version(adapter text, version int) RETURNS peft.adapters
    LANGUAGE plpgsql STABLE CALLED ON NULL INPUT
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        result peft.adapters;
    BEGIN
        SELECT * INTO result FROM peft.adapters a
         WHERE a.name = _adapter_version.adapter
           AND CASE WHEN _adapter_version.version IS NULL THEN a.active
                    ELSE a.version = _adapter_version.version END;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'adapter "%" has no %', adapter,
                  coalesce('version ' || _adapter_version.version, 'active version')
                  USING ERRCODE = 'undefined_object';
        END IF;
        RETURN result;
    END
    $$;

CREATE FUNCTION peft_export(adapter text, version int DEFAULT NULL) RETURNS bytea
    LANGUAGE sql STABLE CALLED ON NULL INPUT
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT (peft._adapter_version(adapter, version)).weights $$;

-- adapter_config.json, plus what PEFT has no key for under "peft_pg" (PEFT
-- ignores it when loading): the task, the class labels, the metrics and the
-- version it came from, so peft_import elsewhere gives back the same adapter.
CREATE FUNCTION peft_export_config(adapter text, version int DEFAULT NULL) RETURNS jsonb
    LANGUAGE sql STABLE CALLED ON NULL INPUT
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT a.config || jsonb_build_object('peft_pg', jsonb_strip_nulls(jsonb_build_object(
                 'task', a.task, 'labels', to_jsonb(a.labels), 'metrics', a.metrics,
                 'method', a.method, 'source', a.name || ' version ' || a.version)))
          FROM peft._adapter_version(adapter, version) a $$;

-- A LoRA adapter over a decoder as llama.cpp's LoRA GGUF, the file
-- llama-cli --lora, Ollama's ADAPTER and llama-cpp-python's lora_path load
-- (version NULL: the active one).  Read as the caller, like peft_export.
CREATE FUNCTION peft_export_gguf(adapter text, version int DEFAULT NULL) RETURNS bytea
    AS 'MODULE_PATHNAME', 'peft_export_gguf'
    LANGUAGE C VOLATILE CALLED ON NULL INPUT;

-- Store an adapter saved by Hugging Face PEFT as a new version, after
-- validating it completely over the base model; returns the version.
CREATE FUNCTION peft_import(adapter text, base_model text, config jsonb, weights bytea,
                            task text DEFAULT NULL, labels text[] DEFAULT NULL,
                            activate boolean DEFAULT true) RETURNS int
    AS 'MODULE_PATHNAME', 'peft_import'
    LANGUAGE C VOLATILE CALLED ON NULL INPUT;

-- Predict with the base weights with the adapter folded in (LoRA, DoRA,
-- (IA)^3), as PEFT's merge_and_unload; returns the version marked.
CREATE FUNCTION peft_merge(adapter text, version int DEFAULT NULL) RETURNS int
    AS 'MODULE_PATHNAME', 'peft_merge'
    LANGUAGE C VOLATILE CALLED ON NULL INPUT;

-- A new version of adapter combining LoRA adapters, as PEFT's
-- add_weighted_adapter ('linear' or 'cat'); returns the version.
CREATE FUNCTION peft_combine(adapter text, sources text[], weights float8[],
                             combination text DEFAULT 'linear',
                             activate boolean DEFAULT true) RETURNS int
    AS 'MODULE_PATHNAME', 'peft_combine'
    LANGUAGE C VOLATILE STRICT;
