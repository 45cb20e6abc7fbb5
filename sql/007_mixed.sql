-- Rows of many adapters in one call: peft_predict(adapters[], inputs[]),
-- peft_embed(model, inputs[], adapters[]), peft_generate(model, prompts[],
-- adapters[]); every row equals what its adapter gives alone.  Their
-- errors, and the per-connection adapter cache (peft.adapter_cache_size).
-- Uses the tiny model and reviews of 003_train, the decoder adapters of
-- 006_train_generation.
\set VERBOSITY terse
SET client_min_messages = warning;

-- One adapter of every method, a regression adapter, and a scaled copy.
SELECT peft_train('mx_' || replace(m, '+', '_'), 'tiny', 'reviews', 'body', 'sentiment', method => m,
                  options => '{"max_steps": 5, "seed": 3}', wait => true) IS NOT NULL AS trained
FROM unnest(ARRAY['lora', 'dora', 'ia3', 'bitfit', 'adapter', 'prompt', 'prefix', 'lora+bitfit']) m;
SELECT peft_train('mx_stars', 'tiny', 'reviews', 'body', 'stars', task => 'regression',
                  options => '{"max_steps": 5}', wait => true) IS NOT NULL AS trained;
SELECT peft_combine('mx_lora_half', ARRAY['mx_lora'], ARRAY[0.5]);
CREATE TEMP TABLE mx_names AS
SELECT n, k FROM unnest(ARRAY['mx_lora', 'mx_dora', 'mx_ia3', 'mx_bitfit', 'mx_adapter', 'mx_prompt',
                              'mx_prefix', 'mx_lora_bitfit', 'mx_stars', 'mx_lora_half']) WITH ORDINALITY u(n, k);

-- 60 rows spread over the ten adapters, interleaved: each row's label and
-- score equal its adapter's alone (the regression adapter has no label).
CREATE TEMP TABLE mx_request AS
SELECT array_agg((SELECT n FROM mx_names WHERE k = 1 + (r.i * 7) % 10) ORDER BY r.i) AS adapters,
       array_agg(r.body ORDER BY r.i) AS inputs
FROM (SELECT row_number() OVER (ORDER BY id) AS i, body FROM reviews WHERE body IS NOT NULL AND id <= 61) r;
SELECT count(*) AS rows, count(DISTINCT m.adapter) AS adapters,
       count(*) FILTER (WHERE m.label IS NOT DISTINCT FROM s.label AND abs(m.score - s.score) <= 1e-6) AS equal_alone,
       count(*) FILTER (WHERE m.label IS NULL) AS regression_rows
FROM mx_request q, peft_predict(q.adapters, q.inputs) m, LATERAL peft_predict(m.adapter, q.inputs[m.ord]) s;
-- the same through the array form of each adapter
SELECT count(*) AS equal_to_array_form
FROM mx_request q, peft_predict(q.adapters, q.inputs) m,
     LATERAL (SELECT * FROM peft_predict(m.adapter, ARRAY[q.inputs[m.ord]])) s
WHERE m.label IS NOT DISTINCT FROM s.label AND abs(m.score - s.score) <= 1e-6;

-- A NULL input is a row of NULLs; ord, adapter and order are kept.
SELECT ord, adapter, label IS NULL AS no_label, score IS NULL AS no_score
FROM peft_predict(ARRAY['mx_lora', 'mx_ia3', 'mx_lora'], ARRAY['good movie', NULL, 'bad hotel']);
SELECT count(*) AS no_rows FROM peft_predict(ARRAY[]::text[], ARRAY[]::text[]);
SELECT count(*) AS strict FROM peft_predict(NULL::text[], ARRAY['a']);

-- Errors: nothing is computed.
SELECT * FROM peft_predict(ARRAY['mx_lora', NULL], ARRAY['a', 'b']);
SELECT * FROM peft_predict(ARRAY['mx_lora'], ARRAY['a', 'b']);
SELECT * FROM peft_predict(ARRAY['mx_lora', 'no_such_adapter'], ARRAY['a', 'b']);
SELECT * FROM peft_predict(ARRAY['mx_lora', 'mixer'], ARRAY['a', 'b']);
SELECT * FROM peft_predict(ARRAY['mixer', 'mixer'], ARRAY['a', 'b']);
SELECT * FROM peft_predict(ARRAY[['mx_lora']], ARRAY[['a']]);

-- A role that cannot see one of the adapters: an error naming it.
UPDATE peft.adapters SET owner = 'peft_plain' WHERE name = 'mx_bitfit';
SET ROLE peft_plain;
SELECT count(*) AS rows FROM peft_predict(ARRAY['mx_bitfit', 'mx_bitfit'], ARRAY['a', 'b']);
SELECT * FROM peft_predict(ARRAY['mx_bitfit', 'mx_lora'], ARRAY['a', 'b']);
RESET ROLE;
UPDATE peft.adapters SET owner = current_user WHERE name = 'mx_bitfit';

-- Embeddings: a NULL adapter is the bare model; each row equals its adapter's (or the model's) alone.
SELECT count(*) AS rows, count(*) FILTER (WHERE m.embedding IS NULL) AS null_inputs,
       count(*) FILTER (WHERE (SELECT max(abs(a - b)) FROM unnest(m.embedding, s.e) x(a, b)) <= 1e-6) AS equal_alone
FROM (VALUES (ARRAY['good movie', 'bad hotel', NULL, 'our team', 'very city'],
              ARRAY[NULL, 'mx_lora', 'mx_ia3', 'mx_adapter', 'mx_prefix'])) v(inputs, adapters),
     peft_embed('tiny', v.inputs, v.adapters) m,
     LATERAL (SELECT peft_embed('tiny', v.inputs[m.ord], v.adapters[m.ord]) AS e) s;
SELECT * FROM peft_embed('tiny', ARRAY['a'], ARRAY['mixer']);
SELECT * FROM peft_embed('tiny', ARRAY['a', 'b'], ARRAY[NULL]);
SELECT * FROM peft_embed('smol', ARRAY['a'], ARRAY[NULL]);

-- Generation: every prompt decoded together, the base products shared;
-- each completion equals its adapter's (or the base model's) alone (greedy).
SELECT m.ord, m.adapter, m.completion = s.c AS equal_alone, m.tokens > 0 AS tokens, m.finish_reason
FROM (VALUES (ARRAY['Join red and cat.', 'Join blue and owl.', 'hi', NULL, 'Join gold and dog.',
                    'Join green and cat.', 'Join red and owl.', 'Join blue and dog.'],
              ARRAY['mixer', NULL, 'mixer_dora', 'mixer', 'mixer_ia3', 'mixer_prompt', 'mixer_prefix',
                    'mixer_bottleneck'])) v(prompts, adapters),
     peft_generate('smol', v.prompts, v.adapters, '{"max_new_tokens": 6}') m
     LEFT JOIN LATERAL (SELECT peft_generate('smol', v.prompts[m.ord], v.adapters[m.ord],
                                             '{"max_new_tokens": 6}') AS c) s ON true
ORDER BY m.ord;
SELECT * FROM peft_generate('smol', ARRAY['hi'], ARRAY['mx_lora']);
SELECT * FROM peft_generate('smol', ARRAY['hi', 'ho'], ARRAY['mixer']);

-- The adapter cache: a call keeps the adapters it uses until the next call
-- begins, which trims to peft.adapter_cache_size (least recently used first).
SET peft.adapter_cache_size = 0;
SELECT count(*) AS rows FROM peft_predict(ARRAY['mx_lora', 'mx_dora', 'mx_ia3'], ARRAY['a', 'b', 'c']);
SELECT adapter FROM peft_adapter_cache() ORDER BY adapter;
SELECT label IS NOT NULL AS predicted FROM peft_predict('mx_ia3', 'good');
SELECT adapter, bytes > 0 AS holds_memory FROM peft_adapter_cache();
RESET peft.adapter_cache_size;
SELECT count(*) AS rows FROM peft_predict(ARRAY['mx_lora', 'mx_dora'], ARRAY['a', 'b']);
SELECT label IS NOT NULL AS predicted FROM peft_predict('mx_adapter', 'good');
SELECT adapter FROM peft_adapter_cache();
SET peft.adapter_cache_size = -1;

SELECT peft_drop_adapter(n) FROM mx_names ORDER BY k;
