-- peft 0.1.0 -> 0.2.0 (ALTER EXTENSION peft UPDATE): the same changes as
-- in sql/peft--0.2.0.sql, for databases created at 0.1.0.

\echo Use "ALTER EXTENSION peft UPDATE TO '0.2.0'" to load this file. \quit

-- A model file changed after registration is refused: its size and
-- modification time are checked on every load.  Rows registered at 0.1.0
-- have no time until peft_verify_model checks their SHA-256 and records it.
ALTER TABLE peft.models ADD COLUMN file_mtime timestamptz;
COMMENT ON COLUMN peft.models.file_bytes IS 'size of the weights file (model.safetensors or the .gguf file) when registered';
COMMENT ON COLUMN peft.models.checksum IS 'SHA-256 of the weights file when registered';
COMMENT ON COLUMN peft.models.file_mtime IS 'modification time of the weights file when registered or last verified (NULL: registered before 0.2.0 and not verified since)';

-- Decoders learn completions: task 'generation' for jobs and adapters.
ALTER TABLE peft.job_rows DROP CONSTRAINT job_rows_task_check,
    ADD CONSTRAINT job_rows_task_check CHECK (task IN ('classification', 'regression', 'generation'));
ALTER TABLE peft.adapters DROP CONSTRAINT adapters_task_check,
    ADD CONSTRAINT adapters_task_check
    CHECK (task IN ('classification', 'regression', 'embedding', 'generation'));

CREATE FUNCTION peft_verify_model(name text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'peft_verify_model'
    LANGUAGE C VOLATILE STRICT;

-- No NULL argument of peft_combine has a meaning.
ALTER FUNCTION peft_combine(text, text[], float8[], text, boolean) STRICT;

-- pg_dump dumps the sequence of job ids too: without it a restored database
-- numbered new jobs from 1 again, and the first one failed on the primary key.
SELECT pg_catalog.pg_extension_config_dump('peft.job_rows_id_seq', '');

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

-- A NULL input of the single-row peft_predict gives one row of NULLs (it gave none).
ALTER FUNCTION peft_predict(text, text) CALLED ON NULL INPUT;

-- Sentence embeddings of many texts in batches; ord is the 1-based position
-- in inputs (a NULL element: a NULL embedding).
CREATE FUNCTION peft_embed(model text, inputs text[], adapter text DEFAULT NULL)
    RETURNS TABLE(ord int, embedding real[])
    AS 'MODULE_PATHNAME', 'peft_embed_array'
    LANGUAGE C VOLATILE CALLED ON NULL INPUT;

-- Cosine similarity of two vectors, in double precision; NULL when either is all zeros.
CREATE FUNCTION peft_cosine(a real[], b real[]) RETURNS float8
    AS 'MODULE_PATHNAME', 'peft_cosine'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- adapter_config.json, plus what PEFT has no key for under "peft_pg" (PEFT
-- ignores it when loading): the task, the class labels, the metrics and the
-- version it came from, so peft_import elsewhere gives back the same adapter.
CREATE OR REPLACE FUNCTION peft_export_config(adapter text, version int DEFAULT NULL) RETURNS jsonb
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

-- The loss curve per optimizer step (thinned evenly to 1,000 points) with
-- its steps and learning rates, and a sparkline of it in peft.jobs.
ALTER TABLE peft.job_rows ADD COLUMN loss_steps int[] NOT NULL DEFAULT '{}',
                          ADD COLUMN lr_history float8[] NOT NULL DEFAULT '{}';
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

CREATE OR REPLACE VIEW peft.jobs WITH (security_invoker = true) AS
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
COMMENT ON COLUMN peft.jobs.loss_history IS 'training loss per optimizer step (the steps in loss_steps), thinned evenly to at most 1,000 points';
COMMENT ON COLUMN peft.jobs.loss_steps IS 'the optimizer step of each loss_history point';
COMMENT ON COLUMN peft.jobs.lr_history IS 'the learning rate of each loss_history point';
COMMENT ON COLUMN peft.jobs.loss_sparkline IS 'loss_history as a one-line sparkline';

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
