-- peft 0.1.0: catalog and SQL surface.
-- This script is the single source of the catalog.  Later versions add
-- sql/peft--0.1.0--X.sql update scripts for ALTER EXTENSION peft UPDATE.

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
    created_at        timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE peft.models IS 'registered base models (peft_register_model)';

-- Training jobs: one row per peft_train call; the worker commits progress here.
CREATE TABLE peft.jobs (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    adapter            text NOT NULL,
    base_model         text NOT NULL,
    method             text NOT NULL DEFAULT 'lora',
    task               text NOT NULL DEFAULT 'classification'
                       CHECK (task IN ('classification', 'regression')),
    data               text NOT NULL,
    input_column       text NOT NULL,
    label_column       text NOT NULL,
    options            jsonb NOT NULL DEFAULT '{}',
    owner              name NOT NULL DEFAULT current_user,
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
    error              text,
    worker_pid         int,
    created_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    finished_at        timestamptz
);
CREATE INDEX jobs_status_idx ON peft.jobs (status) WHERE status IN ('queued', 'running');
COMMENT ON TABLE peft.jobs IS 'training jobs and their live progress';
COMMENT ON COLUMN peft.jobs.loss_history IS 'training loss at each progress report, oldest first';

-- Adapters: every trained or imported version is a row; weights are
-- safetensors bytes with Hugging Face PEFT tensor names.
CREATE TABLE peft.adapters (
    name        text NOT NULL CHECK (name ~ '^[A-Za-z0-9_.-]{1,63}$'),
    version     int NOT NULL CHECK (version >= 1),
    base_model  text NOT NULL REFERENCES peft.models (name) ON UPDATE CASCADE,
    method      text NOT NULL,
    task        text NOT NULL CHECK (task IN ('classification', 'regression')),
    config      jsonb NOT NULL,
    labels      text[],
    weights     bytea NOT NULL,
    metrics     jsonb NOT NULL DEFAULT '{}',
    job         bigint,
    owner       name NOT NULL DEFAULT current_user,
    created_at  timestamptz NOT NULL DEFAULT now(),
    active      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (name, version)
);
CREATE UNIQUE INDEX adapters_one_active_idx ON peft.adapters (name) WHERE active;
COMMENT ON TABLE peft.adapters IS 'adapter versions; at most one active version per name';

-- Catalog rows are user data: pg_dump must dump them.
SELECT pg_catalog.pg_extension_config_dump('peft.models', '');
SELECT pg_catalog.pg_extension_config_dump('peft.adapters', '');
SELECT pg_catalog.pg_extension_config_dump('peft.jobs', '');

-- Everyone may read the catalog; row-level security shows each role its
-- own rows (and those of roles it belongs to).  Writes go through the
-- functions only.
ALTER TABLE peft.jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE peft.adapters ENABLE ROW LEVEL SECURITY;
CREATE POLICY jobs_owner ON peft.jobs
    USING (pg_catalog.pg_has_role(current_user, owner, 'MEMBER'));
CREATE POLICY adapters_owner ON peft.adapters
    USING (pg_catalog.pg_has_role(current_user, owner, 'MEMBER'));
GRANT USAGE ON SCHEMA peft TO PUBLIC;
GRANT SELECT ON peft.models, peft.jobs, peft.adapters TO PUBLIC;

-- Version of the SQL layer (does not load the engine).
CREATE FUNCTION peft_version() RETURNS text
    AS 'MODULE_PATHNAME', 'peft_version'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- Load the engine in this backend and describe it: version, backends, threads, CUDA devices.
CREATE FUNCTION peft_engine_info() RETURNS jsonb
    AS 'MODULE_PATHNAME', 'peft_engine_info'
    LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;
