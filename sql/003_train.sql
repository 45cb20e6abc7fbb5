-- Training, prediction and adapter versions on the tiny model.
\getenv tiny_model PEFT_TINY_MODEL_DIR
\set VERBOSITY terse
SET client_min_messages = warning;
SELECT name FROM peft_register_model('tiny', :'tiny_model');

-- A learnable task: the label follows the sentiment word in the text.
CREATE TABLE reviews (id int PRIMARY KEY, body text, sentiment text, stars float8);
INSERT INTO reviews
SELECT i,
       (ARRAY['the','movie','was','and','it','service','food','place','we','went'])[1 + (i * 7) % 10] || ' ' ||
       (ARRAY['good','great','excellent','bad','terrible','awful','table','chair','city','river'])[1 + (i * 13) % 10] || ' ' ||
       (ARRAY['today','with','our','team','very','really','hotel','room'])[1 + (i * 3) % 8],
       CASE WHEN (i * 13) % 10 < 3 THEN 'positive' WHEN (i * 13) % 10 < 6 THEN 'negative' ELSE 'neutral' END,
       CASE WHEN (i * 13) % 10 < 3 THEN 5 WHEN (i * 13) % 10 < 6 THEN 1 ELSE 3 END
FROM generate_series(1, 400) i;
INSERT INTO reviews VALUES (1001, NULL, 'positive', 5), (1002, 'good', NULL, NULL);

-- Bad arguments are refused at call time; no job is queued.
SELECT peft_train('a', 'nope', 'reviews', 'body', 'sentiment');
SELECT peft_train('a', 'tiny', 'no_such_table', 'body', 'sentiment');
SELECT peft_train('a', 'tiny', 'reviews', 'no_column', 'sentiment');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment', task => 'clustering');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment', method => 'magic');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment', task => 'regression');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment', options => '{"rank": 8}');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment', options => '{"r": "eight"}');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment', options => '{"r": 0}');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment', options => '{"learning_rate": -1}');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment', options => '{"target_modules": ["nowhere"]}');
-- Call-time checks that say what to do (hints shown).
\set VERBOSITY default
CREATE TABLE scores AS SELECT body, stars, id FROM reviews;
SELECT peft_train('a', 'tiny', 'scores', 'body', 'stars');
SELECT peft_train('a', 'tiny', 'scores', 'id', 'stars', task => 'regression');
SELECT peft_train('a', 'tiny', 'reviews');
SELECT peft_train('a', 'tiny', 'reviews', 'body');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment', options => '{"num_virtual_tokens": 4}');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment', method => 'ia3', options => '{"r": 4}');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'stars', task => 'regression', options => '{"max_classes": 5}');
\set VERBOSITY terse
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment', options => '{"max_length": 100000}');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment', options => '[1, 2]');
SELECT peft_train('a', 'tiny', 'SELECT body, sentiment FROM reviews WHERE false', 'body', 'sentiment');
SELECT peft_train('a', 'tiny', 'SELECT body, ''x'' AS sentiment FROM reviews', 'body', 'sentiment');
-- a query pasted from psql: its trailing comment, semicolon and blanks do not matter
SELECT peft_train('a', 'tiny', E'SELECT body, ''x'' AS sentiment FROM reviews -- one class\n;  \n', 'body', 'sentiment');
SELECT peft_train('bad name', 'tiny', 'reviews', 'body', 'sentiment');
SELECT peft_train('a', 'tiny', 'SELECT body, sentiment FROM reviews) AS peft_data; SELECT 1 FROM (SELECT 1', 'body', 'sentiment');
SELECT peft_train('a', 'tiny', 'WITH gone AS (DELETE FROM reviews RETURNING *) SELECT body, sentiment FROM gone', 'body', 'sentiment');
SELECT count(*) AS reviews_intact FROM reviews;
SELECT count(*) AS jobs FROM peft.jobs;

-- Train and wait: the job succeeds and version 1 is active.
SELECT peft_train('sentiment', 'tiny', 'reviews', 'body', 'sentiment',
                  options => '{"epochs": 6, "learning_rate": 0.01, "batch_size": 16, "seed": 7}',
                  wait => true) AS job \gset
SELECT status, progress, step = total_steps AS all_steps, loss_history <> '{}' AS has_history,
       jsonb_array_length(metrics->'epochs') AS epochs_evaluated,
       (metrics->>'skipped_rows')::int AS skipped
FROM peft.jobs WHERE id = :job;
SELECT name, version, base_model, method, task, labels, active,
       -- the largest class is 40% of the rows: a constant answer scores 0.4
       (metrics->'final'->>'accuracy')::float8 > 0.9
       AND (metrics->'final'->>'accuracy')::float8 >= majority.share + 0.5 AS beats_majority_class,
       config->>'peft_type' AS peft_type, (config->>'r')::int AS r,
       config->'target_modules' AS targets, length(weights) > 1000 AS has_weights
FROM peft.adapters,
     (SELECT max(n)::float8 / sum(n) AS share
      FROM (SELECT count(*) AS n FROM reviews WHERE body IS NOT NULL AND sentiment IS NOT NULL
            GROUP BY sentiment) classes) majority
WHERE name = 'sentiment';

-- peft_wait returns the finished job row.
SELECT id = :job AS same, status FROM peft_wait(:job);

-- Predictions: labels and probabilities.
SELECT label, score > 0.5 AS confident FROM peft_predict('sentiment', 'movie excellent today');
SELECT label FROM peft_predict('sentiment', 'went awful team');
SELECT ord, label, score BETWEEN 1.0 / 3 AND 1 AS probability
FROM peft_predict('sentiment', ARRAY['it good hotel', NULL, 'food terrible room', 'place table with']);
SELECT count(*) FILTER (WHERE p.label = r.sentiment)::float8 / count(*) > 0.95 AS agrees
FROM reviews r, LATERAL peft_predict('sentiment', r.body) p WHERE r.body IS NOT NULL;
SELECT * FROM peft_predict('unknown', 'text');
-- peft_evaluate: the task's metrics on a table's rows, as SQL over peft_predict computes them.
SELECT (e->>'rows')::int AS rows, (e->>'skipped_rows')::int AS skipped, e->'confusion'->'labels' AS labels,
       abs((e->>'accuracy')::float8 - (SELECT avg((p.label = r.sentiment)::int)
                                      FROM reviews r, LATERAL peft_predict('sentiment', r.body) p
                                      WHERE r.body IS NOT NULL AND r.sentiment IS NOT NULL)) < 1e-6 AS accuracy_agrees,
       (SELECT sum(x::int) FROM jsonb_array_elements(e->'confusion'->'matrix') m, jsonb_array_elements_text(m) x) AS matrix_total,
       (e->'classes'->'positive'->>'support')::int = (SELECT count(*) FROM reviews WHERE sentiment = 'positive' AND body IS NOT NULL)
       AS support_agrees, (e->>'macro_f1')::float8 BETWEEN 0.9 AND 1 AS macro_f1
FROM peft_evaluate('sentiment', 'reviews', 'body', 'sentiment') e;
SELECT peft_evaluate('sentiment', 'SELECT body AS input, ''unheard'' AS label FROM reviews LIMIT 3;')->>'unknown_labels' AS unknown;
SELECT peft_evaluate('sentiment', 'reviews', 'body', 'sentiment', version => 99);
SELECT peft_evaluate('sentiment', 'reviews', 'nope', 'sentiment');
SELECT peft_evaluate('sentiment', NULL);
-- record => true keeps the result on the version, with the data it was measured on.
SELECT (peft_evaluate('sentiment', 'SELECT body, sentiment FROM reviews WHERE id <= 100', 'body', 'sentiment',
                      record => true)->>'rows')::int AS rows;
SELECT jsonb_array_length(metrics->'evaluations') AS evaluations,
       metrics->'evaluations'->0->>'data' AS data, (metrics->'evaluations'->0->'metrics'->>'rows')::int AS rows
FROM peft.adapters WHERE name = 'sentiment' AND active;
-- peft_score: every row keyed by its key column, as peft_predict scores it.
SELECT count(*) AS scored, count(*) FILTER (WHERE s.key IS NULL) AS null_keys,
       count(*) FILTER (WHERE s.label IS NULL) AS null_inputs,
       count(*) FILTER (WHERE p.label = s.label AND abs(p.score - s.score) < 1e-6) AS agree
FROM peft_score('sentiment', 'reviews', 'id', 'body') s
JOIN reviews r ON r.id::text = s.key
LEFT JOIN LATERAL peft_predict('sentiment', r.body) p ON true;
SELECT key, label, score > 0.5 AS confident FROM peft_score('sentiment', 'SELECT 7 AS k, ''good'' AS input', 'k');
SELECT * FROM peft_score('sentiment', 'reviews', 'nope', 'body');
-- A NULL input: one row of NULLs, as in the array form (a LATERAL call keeps its row).
SELECT label IS NULL AS null_label, score IS NULL AS null_score FROM peft_predict('sentiment', NULL::text);
SELECT r.id, p.label IS NULL AS null_label FROM reviews r, LATERAL peft_predict('sentiment', r.body) p
WHERE r.id = 1001;

-- Embeddings through the adapter differ from the bare model's.
SELECT peft_embed('tiny', 'good film', 'sentiment') <> peft_embed('tiny', 'good film') AS adapted;

-- A second version, not activated; then activate it, roll back to 1, drop 2.
-- max_steps ends it after 7 steps (of 12 in the epoch), as Hugging Face's:
-- the schedule spans those 7, and the metrics say what the job held.
SELECT peft_train('sentiment', 'tiny', 'reviews', 'body', 'sentiment',
                  options => '{"epochs": 1, "max_steps": 7, "activate": false}', wait => true) AS job \gset
SELECT step, total_steps, jsonb_array_length(metrics->'epochs') AS evaluations FROM peft.jobs WHERE id = :job;
-- The loss curve: a point per optimizer step with its learning rate, and a sparkline.
SELECT loss_steps, cardinality(loss_history) AS losses, cardinality(lr_history) AS rates,
       lr_history[1] < lr_history[2] AS warming_up, length(loss_sparkline) AS sparkline_chars
FROM peft.jobs WHERE id = :job;
SELECT (metrics->'memory'->>'rows_kb')::int >= 0 AS rows_kb, (metrics->'memory'->>'state_kb')::int > 0 AS state_kb,
       (metrics->'memory'->>'activations_kb')::int > 0 AS activations_kb,
       (metrics->'memory'->>'limit_kb')::int AS limit_kb
FROM peft.adapters WHERE name = 'sentiment' AND version = 2;
SELECT peft_train('x', 'tiny', 'reviews', 'body', 'sentiment', options => '{"max_steps": 0}');
SELECT version, active FROM peft.adapters WHERE name = 'sentiment' ORDER BY version;
SELECT peft_activate('sentiment', 2);
SELECT version, active FROM peft.adapters WHERE name = 'sentiment' ORDER BY version;
SELECT peft_activate('sentiment', 1);
SELECT peft_activate('sentiment', 9);
SELECT peft_drop_adapter('sentiment', 2);
SELECT peft_drop_adapter('sentiment', 2);
SELECT version, active FROM peft.adapters WHERE name = 'sentiment' ORDER BY version;

-- Without wait, the job starts once the caller commits; peft_wait follows it.
SELECT peft_train('later', 'tiny', 'reviews', 'body', 'sentiment', options => '{"epochs": 1}') AS later_job \gset
SELECT status FROM peft_wait(:later_job);
SELECT peft_cancel(:later_job) AS canceled_finished_job;
-- Waiting in the transaction that created the job would never end; a rollback leaves no job.
BEGIN;
SELECT peft_train('later', 'tiny', 'reviews', 'body', 'sentiment', options => '{"epochs": 1}') AS doomed_job \gset
SELECT peft_wait(:doomed_job);
ROLLBACK;
SELECT count(*) AS later_jobs FROM peft.jobs WHERE adapter = 'later';
-- Dropping the active version activates the newest remaining one; dropping
-- the last says the adapter is gone (NOTICEs).
SET client_min_messages = notice;
SELECT peft_train('sentiment', 'tiny', 'reviews', 'body', 'sentiment', options => '{"max_steps": 1}',
                  wait => true) > 0 AS trained_version_2;
SELECT peft_activate('sentiment', 2);
SELECT peft_drop_adapter('sentiment', 2);
SELECT version, active FROM peft.adapters WHERE name = 'sentiment' ORDER BY version;
SELECT label FROM peft_predict('sentiment', 'good') AS still_predicts;
-- peft.adapter_versions: every column but the weights, with headline metrics.
SELECT name, version, active, base_model, method, task, labels, accuracy BETWEEN 0 AND 1 AS accuracy,
       macro_f1 BETWEEN 0 AND 1 AS macro_f1, r2 IS NULL AND mae IS NULL AS no_regression_metrics,
       train_rows, valid_rows, parameters > 0 AS parameters, weights_bytes > 1000 AS weights,
       merged, job IS NOT NULL AS job, owner = current_user AS owner, created_at <= now() AS created
FROM peft.adapter_versions WHERE name = 'sentiment';
SELECT peft_drop_adapter('later', 1);
SET client_min_messages = warning;
SELECT peft_wait(-1);

-- Names in data resolve with the caller's search_path, in the worker too.
CREATE SCHEMA elsewhere;
CREATE TABLE elsewhere.more_reviews AS SELECT * FROM reviews;
SET search_path = elsewhere, public;
SELECT peft_train('elsewhere', 'tiny', 'more_reviews', 'body', 'sentiment', options => '{"epochs": 1}') AS where_job \gset
RESET search_path;
SELECT status FROM peft_wait(:where_job);

-- Regression: a number out, no label.
SELECT peft_train('stars', 'tiny', 'reviews', 'body', 'stars', task => 'regression',
                  options => '{"epochs": 8, "learning_rate": 0.01, "batch_size": 16}', wait => true) IS NOT NULL AS trained;
SELECT task, labels IS NULL AS no_labels, (metrics->'final'->>'r2')::float8 > 0.5 AS fits
FROM peft.adapters WHERE name = 'stars';
SELECT (e->>'rows')::int AS rows, (e->>'r2')::float8 > 0.5 AS fits, (e->>'mse')::float8 >= 0 AS mse,
       (e->>'mae')::float8 >= 0 AS mae
FROM peft_evaluate('stars', 'reviews', 'body', 'stars') e;
SELECT label IS NULL AS no_label, score BETWEEN 3.5 AND 6 AS high FROM peft_predict('stars', 'it excellent hotel');

-- Corrupted weights are refused with an error; the backend survives.
UPDATE peft.adapters SET weights = '\x00010203' WHERE name = 'stars';
SELECT * FROM peft_predict('stars', 'it excellent hotel');
SELECT 1 AS still_alive;

-- Another role sees none of these adapters or jobs.
GRANT SELECT ON reviews TO peft_plain;
SET ROLE peft_plain;
SELECT count(*) AS visible_adapters FROM peft.adapters;
SELECT count(*) AS visible_versions FROM peft.adapter_versions;
SELECT count(*) AS visible_jobs FROM peft.jobs;
SELECT * FROM peft_predict('sentiment', 'good');
SELECT peft_drop_adapter('sentiment');
SELECT peft_cancel(:job);
RESET ROLE;

-- More distinct labels than max_classes among the rows read fail the job.
\set VERBOSITY default
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment', options => '{"max_classes": 2, "max_steps": 1}',
                  wait => true);
\set VERBOSITY terse

-- A long job's curve is thinned evenly to at most 1,000 points, ending at its last step.
SELECT peft_train('long', 'tiny', 'reviews', 'body', 'sentiment', wait => true,
                  options => '{"max_steps": 2100, "batch_size": 1, "validation_fraction": 0}') AS long_job \gset
SELECT cardinality(loss_steps) AS points, loss_steps[1] AS first, loss_steps[2] - loss_steps[1] AS stride,
       loss_steps[cardinality(loss_steps)] AS last,
       (SELECT count(DISTINCT d) FROM (SELECT loss_steps[i + 1] - loss_steps[i] AS d
                                       FROM generate_subscripts(loss_steps, 1) i
                                       WHERE i < cardinality(loss_steps) - 1) gaps) AS distinct_gaps,
       cardinality(loss_history) = cardinality(loss_steps) AND cardinality(lr_history) = cardinality(loss_steps) AS aligned
FROM peft.jobs WHERE id = :long_job;
SELECT peft_drop_adapter('long');
-- Sparklines: eight levels over the range; NaN and infinities left out.
SELECT peft._sparkline(ARRAY[1, 2, 3, 4, 5, 6, 7, 8]) AS rising, peft._sparkline(ARRAY[2, 2]) AS flat,
       peft._sparkline(ARRAY[1, 'NaN', 'Infinity', 8]::float8[]) AS finite_only, peft._sparkline('{}') IS NULL AS empty,
       length(peft._sparkline(array_fill(1.0::float8, ARRAY[1000]))) AS at_most_60;
-- validation_data: the job validates on the caller's own held-out rows, and peft_evaluate on
-- the same rows gives the job's figures (recorded with 6 significant digits).
SELECT peft_train('heldout', 'tiny', 'SELECT * FROM reviews WHERE id <= 300', 'body', 'sentiment',
                  options => '{"epochs": 2, "learning_rate": 0.01, "seed": 3,
                               "validation_data": "SELECT * FROM reviews WHERE id > 300"}',
                  wait => true) AS job \gset
SELECT (metrics->>'train_rows')::int AS train_rows, (metrics->>'valid_rows')::int AS valid_rows,
       (metrics->>'skipped_rows')::int AS skipped, (e->>'rows')::int AS evaluated,
       (e->>'accuracy')::float8 BETWEEN 0.34 AND 0.99 AS partly_learnt,  -- 0.45 here: agreement is not trivial
       abs((metrics->'final'->>'accuracy')::float8 - (e->>'accuracy')::float8) < 1e-5 AS accuracy_agrees,
       abs((metrics->'final'->>'macro_f1')::float8 - (e->>'macro_f1')::float8) < 1e-5 AS macro_f1_agrees
FROM peft.adapters, peft_evaluate('heldout', 'SELECT * FROM reviews WHERE id > 300', 'body', 'sentiment') e
WHERE job = :job;
SELECT peft_train('heldout_stars', 'tiny', 'SELECT * FROM reviews WHERE id <= 300', 'body', 'stars',
                  task => 'regression', options => '{"epochs": 1, "learning_rate": 0.003,
                  "validation_data": "SELECT * FROM reviews WHERE id > 300"}', wait => true) AS job \gset
SELECT (metrics->>'valid_rows')::int AS valid_rows,
       abs((metrics->'final'->>'mse')::float8 / (e->>'mse')::float8 - 1) < 1e-5 AS mse_agrees,
       abs((metrics->'final'->>'r2')::float8 - (e->>'r2')::float8) < 1e-5 AS r2_agrees
FROM peft.adapters, peft_evaluate('heldout_stars', 'SELECT * FROM reviews WHERE id > 300', 'body', 'stars') e
WHERE job = :job;
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment',
                  options => '{"validation_data": "reviews", "validation_fraction": 0.2}');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment',
                  options => '{"validation_data": "SELECT body FROM reviews"}');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment',
                  options => '{"validation_data": "SELECT * FROM reviews WHERE body IS NULL"}');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment', options => '{"validation_data": " ; "}');
SELECT peft_train('a', 'tiny', 'reviews', 'body', 'sentiment', options => '{"validation_data": 7}');
SELECT peft_drop_adapter('heldout'), peft_drop_adapter('heldout_stars');
-- Predictions read texts as the version was trained: max_length travels in its metrics (3 tokens:
-- [CLS], the first word, [SEP], so texts that share their first word predict alike).
SELECT peft_train('short', 'tiny', 'reviews', 'body', 'sentiment', options => '{"max_length": 3, "max_steps": 2}',
                  wait => true) > 0 AS trained;
SELECT metrics->'max_length' AS max_length FROM peft.adapters WHERE name = 'short';
SELECT count(DISTINCT (label, score)) AS distinct_predictions
FROM peft_predict('short', ARRAY['movie good today', 'movie terrible room', 'movie']);
-- a max_length that is not a usable number (an import's metrics may hold anything) reads as the model's
UPDATE peft.adapters SET metrics = jsonb_set(metrics, '{max_length}', '"three"') WHERE name = 'short';
SELECT count(DISTINCT (label, score)) AS distinct_predictions
FROM peft_predict('short', ARRAY['movie good today', 'movie terrible room', 'movie']);
SELECT peft_drop_adapter('short');
