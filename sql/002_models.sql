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
