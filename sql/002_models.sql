-- Registering models: privileges, validation, the catalog row.
\getenv tiny_model PEFT_TINY_MODEL_DIR
\set VERBOSITY terse

-- A folder that is not a model, a relative path, a bad name.
SELECT peft_register_model('nothing', '/tmp');
SELECT peft_register_model('relative', 'models/tiny');
SELECT peft_register_model('bad name', :'tiny_model');
SELECT peft_register_model('missing', '/no/such/folder');

-- The tiny model registers; sizes come from its config.
SELECT name, architecture, hidden_size, num_layers, num_heads, intermediate_size,
       vocab_size, max_position, parameters > 0 AS has_parameters,
       length(checksum) AS checksum_length, config->>'pooling' AS pooling,
       (config->>'normalize')::boolean AS normalize
FROM peft_register_model('tiny', :'tiny_model');

-- Registering again updates the row in place.
SELECT name, path = :'tiny_model' AS same_path FROM peft_register_model('tiny', :'tiny_model');
SELECT count(*) FROM peft.models;

-- Ordinary roles may not register models, but may read the catalog.
CREATE ROLE peft_plain;
SET ROLE peft_plain;
SELECT peft_register_model('mine', :'tiny_model');
SELECT name FROM peft.models;
RESET ROLE;

-- Embeddings of the bare model: unit length (sentence-transformers Normalize).
SELECT array_length(peft_embed('tiny', 'the movie was good'), 1) AS dims,
       round((SELECT sqrt(sum(x * x)) FROM unnest(peft_embed('tiny', 'the movie was good')) x)::numeric, 5) AS norm;
SELECT peft_embed('tiny', NULL) IS NULL AS null_in_null_out;
SELECT peft_embed('nope', 'text');
-- The same text gives the same vector; a different text a different one.
SELECT peft_embed('tiny', 'good film') = peft_embed('tiny', 'good film') AS deterministic,
       peft_embed('tiny', 'good film') <> peft_embed('tiny', 'bad film') AS distinct_texts;
-- Many texts at once: the same vectors as one at a time (to float rounding:
-- a batch's products have other shapes), in input order.
SELECT ord, embedding IS NULL AS null_embedding,
       (SELECT max(abs(x - y)) FROM unnest(embedding, peft_embed('tiny', (ARRAY['good film', NULL, 'bad film'])[ord]))
        AS t(x, y)) < 1e-6 AS same_as_single
FROM peft_embed('tiny', ARRAY['good film', NULL, 'bad film']) ORDER BY ord;
SELECT count(*) FROM peft_embed('tiny', ARRAY[]::text[]) AS none;
SELECT * FROM peft_embed('tiny', NULL::text[]);
-- Plain SQL on embeddings: no component underflows a real product (tiny
-- ones are 0), and peft_cosine agrees with the sum of products.
SELECT (SELECT sum(x * y) FROM unnest(peft_embed('tiny', 'good film'), peft_embed('tiny', 'bad film')) AS t(x, y))
       IS NOT NULL AS sql_dot_product,
       (SELECT count(*) FROM unnest(peft_embed('tiny', 'good film')) x WHERE x <> 0 AND abs(x) < 1.0842022e-19) AS tiny_left;
SELECT round(peft_cosine(peft_embed('tiny', 'good film'), peft_embed('tiny', 'good film'))::numeric, 6) AS self,
       abs(peft_cosine(peft_embed('tiny', 'good film'), peft_embed('tiny', 'bad film')) -
           (SELECT sum(x::float8 * y) FROM unnest(peft_embed('tiny', 'good film'), peft_embed('tiny', 'bad film')) AS t(x, y)))
       < 1e-6 AS matches_dot_of_unit_vectors;
SELECT peft_cosine(ARRAY[1, 0]::real[], ARRAY[0, 1]::real[]) AS orthogonal,
       peft_cosine(ARRAY[3, 4]::real[], ARRAY[6, 8]::real[]) AS parallel,
       peft_cosine(ARRAY[0, 0]::real[], ARRAY[1, 1]::real[]) AS zero_is_null;
SELECT peft_cosine(ARRAY[1, 2]::real[], ARRAY[1, 2, 3]::real[]);
SELECT peft_cosine(ARRAY[1, NULL]::real[], ARRAY[1, 2]::real[]);
SELECT peft_cosine(ARRAY['Infinity', 1]::real[], ARRAY[1, 2]::real[]);
