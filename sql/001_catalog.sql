-- The extension's catalog, settings and engine loading.

-- The SQL layer answers without loading the engine.
SELECT peft_version();

-- Schema peft holds the catalog tables, the jobs view and their indexes.
SELECT c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'peft'
ORDER BY c.relname;

-- Columns of each catalog table.
SELECT table_name, string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position)
FROM information_schema.columns
WHERE table_schema = 'peft'
GROUP BY table_name
ORDER BY table_name;

-- Functions that are not STRICT, each because a NULL argument has a meaning
-- (documented in the README) or for internal use; every other function is
-- STRICT.  A new function shows up here and needs that reason.
SELECT p.oid::regprocedure AS called_on_null_input
FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'peft'
WHERE NOT p.proisstrict AND p.pronargs > 0
ORDER BY p.oid::regprocedure::text;

-- Catalog rows are dumped by pg_dump.
SELECT unnest(extconfig)::regclass AS dumped FROM pg_extension WHERE extname = 'peft' ORDER BY 1;

-- Row-level security is on for per-role rows.
SELECT relname, relrowsecurity FROM pg_class
WHERE oid IN ('peft.job_rows'::regclass, 'peft.adapters'::regclass) ORDER BY 1;

-- Loading the engine reports its version and the CPU backend.
SELECT info->'backends' ? 'cpu' AS has_cpu,
       info->>'version' = peft_version() AS same_version,
       (info->>'threads')::int AS threads
FROM (SELECT peft_engine_info() AS info) s;

-- Settings are validated.
SET peft.device = 'tpu';
SET peft.threads = 0;
SET peft.device = 'cpu';
SHOW peft.device;
RESET peft.device;
SET peft.no_such_setting = 1;

-- The catalog checks its invariants.
\set VERBOSITY terse
INSERT INTO peft.job_rows (adapter, base_model, data, input_column, label_column, status)
VALUES ('a', 'm', 't', 'i', 'l', 'sleeping');
INSERT INTO peft.models (name, path, architecture, hidden_size, num_layers, num_heads,
                         intermediate_size, vocab_size, max_position, parameters,
                         file_bytes, checksum)
VALUES ('bad name!', '/x', 'bert', 1, 1, 1, 1, 1, 1, 1, 1, 'x');

\set VERBOSITY default

-- DROP EXTENSION removes everything it created.
DROP EXTENSION peft;
SELECT count(*) AS schemas FROM pg_namespace WHERE nspname = 'peft';
SELECT count(*) AS functions FROM pg_proc WHERE proname LIKE 'peft\_%';
CREATE EXTENSION peft;
SELECT count(*) AS tables FROM pg_tables WHERE schemaname = 'peft';
