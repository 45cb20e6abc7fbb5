-- The quick start's main job, run by scripts/quickstart in database peft_demo:
-- register all-MiniLM-L6-v2, load labelled support tickets, train a LoRA
-- adapter in a background worker, show its validation metrics, predict, and
-- list the adapter versions.  :model_dir comes from the script, and the
-- tickets arrive on psql's standard input.
\set ON_ERROR_STOP on
\pset footer off
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS peft;
ALTER EXTENSION peft UPDATE;
RESET client_min_messages;

\echo '== register the base model'
SELECT name, architecture, hidden_size, num_layers, parameters,
       pg_size_pretty(file_bytes) AS file_size
FROM peft_register_model('minilm', :'model_dir');

\echo '== load the support tickets (scripts/make_demo_data.py)'
SET client_min_messages = warning;
DROP TABLE IF EXISTS tickets;
RESET client_min_messages;
CREATE TABLE tickets (id bigserial PRIMARY KEY, body text NOT NULL, queue text NOT NULL);
\copy tickets (body, queue) FROM pstdin WITH (FORMAT text, HEADER true)
SELECT queue, count(*) AS tickets FROM tickets GROUP BY queue ORDER BY count(*) DESC;

\echo '== train a LoRA adapter (r=8 on query and value) in a background worker'
\timing on
SELECT peft_train('ticket_router', 'minilm', 'tickets', input => 'body', label => 'queue',
                  options => '{"r": 8, "lora_alpha": 16, "epochs": 1, "max_length": 64,
                               "learning_rate": 0.001, "batch_size": 32}',
                  wait => true) AS job \gset
\timing off
SELECT id AS job, status, step, total_steps, round(loss::numeric, 4) AS last_loss,
       round(samples_per_second::numeric, 1) AS rows_per_second
FROM peft.jobs WHERE id = :job;

\echo '== validation metrics (held-out 10%)'
SELECT version, round(accuracy::numeric, 4) AS accuracy, round(macro_f1::numeric, 4) AS macro_f1,
       train_rows, valid_rows, parameters
FROM peft.adapter_versions WHERE name = 'ticket_router' AND active;

\echo '== predictions for new tickets'
SELECT t.body, p.label, round(p.score::numeric, 3) AS probability
FROM (VALUES ('I was charged twice for my subscription this month'),
             ('My package never arrived and the tracking has not moved in a week'),
             ('I cannot log in, the password reset email never comes'),
             ('The app crashes every time I open the camera'),
             ('I would like to send back the shoes, they are too small'),
             ('Do you offer a discount if we buy 50 licenses?')) AS t(body),
     LATERAL peft_predict('ticket_router', t.body) AS p;

\echo '== adapter versions'
SELECT name, version, active, base_model, method, array_length(labels, 1) AS classes,
       pg_size_pretty(weights_bytes) AS weights, created_at
FROM peft.adapter_versions ORDER BY name, version;
