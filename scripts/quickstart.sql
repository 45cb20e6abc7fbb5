-- The quick start's main job, run by scripts/quickstart in database peft_demo:
-- register all-MiniLM-L6-v2, load labelled support tickets, train a LoRA
-- adapter in a background worker, show its validation metrics, predict, and
-- list the adapter versions; then register SmolLM2 (a decoder, GGUF) and
-- generate.  :model_dir and :decoder come from the script, and the tickets
-- arrive on psql's standard input.
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

\echo '== train a LoRA adapter (r=8 on query and value) in a background worker; every tenth ticket held out'
\timing on
SELECT peft_train('ticket_router', 'minilm', 'SELECT body, queue FROM tickets WHERE id % 10 <> 0',
                  input => 'body', label => 'queue',
                  options => '{"r": 8, "lora_alpha": 16, "epochs": 1, "max_length": 64, "batch_size": 32,
                               "validation_data": "SELECT body, queue FROM tickets WHERE id % 10 = 0"}',
                  wait => true) AS job \gset
\timing off
SELECT id AS job, status, step, total_steps, round(loss::numeric, 4) AS last_loss,
       round(samples_per_second::numeric, 1) AS rows_per_second
FROM peft.jobs WHERE id = :job;

\echo '== validation metrics of the job (the held-out tickets)'
SELECT version, round(accuracy::numeric, 4) AS accuracy, round(macro_f1::numeric, 4) AS macro_f1,
       train_rows, valid_rows, parameters
FROM peft.adapter_versions WHERE name = 'ticket_router' AND active;

\echo '== peft_evaluate on the same held-out tickets: the same figures, and per queue'
SELECT peft_evaluate('ticket_router', 'SELECT body, queue FROM tickets WHERE id % 10 = 0',
                     input => 'body', label => 'queue') AS evaluation \gset
SELECT (:'evaluation'::jsonb->>'rows')::int AS rows, round((:'evaluation'::jsonb->>'accuracy')::numeric, 4) AS accuracy,
       round((:'evaluation'::jsonb->>'macro_f1')::numeric, 4) AS macro_f1;
SELECT c.key AS queue, (c.value->>'support')::int AS tickets, round((c.value->>'precision')::numeric, 3) AS precision,
       round((c.value->>'recall')::numeric, 3) AS recall, round((c.value->>'f1')::numeric, 3) AS f1
FROM jsonb_each(:'evaluation'::jsonb->'classes') AS c ORDER BY c.key;

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

\echo '== register a decoder: SmolLM2-135M-Instruct, quantized Q4_1, from its GGUF file'
SELECT name, architecture, num_layers, parameters, pg_size_pretty(file_bytes) AS file_size,
       config->>'quantization' AS quantization, (config->>'chat_template')::boolean AS chat_template
FROM peft_register_model('smollm2', :'decoder');

\echo '== generate (greedy; the chat template makes each prompt the user turn)'
\timing on
SELECT ord, prompt, completion, tokens, finish_reason
FROM peft_generate('smollm2', ARRAY['What is the capital of France?',
                                    'Give me one tip for writing a good support reply.'],
                   options => '{"max_new_tokens": 64}') AS g
JOIN unnest(ARRAY['What is the capital of France?',
                  'Give me one tip for writing a good support reply.']) WITH ORDINALITY AS q(prompt, i)
  ON q.i = g.ord;
\timing off
