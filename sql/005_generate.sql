-- Text generation with a decoder (SmolLM2-135M-Instruct, Q4_1 GGUF, from
-- scripts/fetch_model): registration, peft_generate's two forms, options,
-- cancellation, and the errors.
\getenv decoder PEFT_DECODER_GGUF
\getenv tiny_model PEFT_TINY_MODEL_DIR
\getenv tiny_llama PEFT_TINY_LLAMA_DIR
\set VERBOSITY terse

-- The GGUF file registers, as does the folder holding it; what it is goes to the catalog.
SELECT name, architecture, hidden_size, num_layers, num_heads, intermediate_size, vocab_size,
       max_position, parameters, length(checksum) AS checksum_length, config
FROM peft_register_model('smollm2', :'decoder');
SELECT name, path = regexp_replace(:'decoder', '/[^/]*$', '') AS folder,
       file_bytes = (SELECT file_bytes FROM peft.models WHERE name = 'smollm2') AS same_file
FROM peft_register_model('smollm2_dir', regexp_replace(:'decoder', '/[^/]*$', ''));

-- A Hugging Face LLaMA folder without its tokenizer.json is refused by name
-- (the folder's temporary path cut from the message).
SELECT set_config('peft_test.tiny_llama', :'tiny_llama', false) IS NOT NULL AS set;
DO $$
BEGIN
    PERFORM peft_register_model('no_tokenizer', current_setting('peft_test.tiny_llama'));
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE '% (%)', regexp_replace(SQLERRM, '"/[^"]*/', '".../'), SQLSTATE;
END $$;

-- Greedy answers: the chat template makes the prompt the user's turn.
SELECT peft_generate('smollm2', 'What is the capital of France?') AS answer;
SELECT peft_generate('smollm2_dir', 'What is the capital of France?') =
       peft_generate('smollm2', 'What is the capital of France?') AS same_model_same_answer;

-- The array form: one row per prompt, NULL for a NULL prompt, finish reasons.
SELECT ord, completion, tokens, finish_reason
FROM peft_generate('smollm2', ARRAY['What is 2+2?', NULL, 'Name a color.'],
                   options => '{"max_new_tokens": 6}') ORDER BY ord;
SELECT count(*) FROM peft_generate('smollm2', ARRAY[]::text[]);
SELECT peft_generate('smollm2', NULL::text) IS NULL AS null_prompt;
-- Prompts decoded together give what each gives alone.
SELECT bool_and(completion = peft_generate('smollm2', p, options => '{"max_new_tokens": 12}')) AS batch_equals_single
FROM peft_generate('smollm2', ARRAY['Say hello.', 'What is SQL?', 'Name a fruit.'],
                   options => '{"max_new_tokens": 12}') g
JOIN unnest(ARRAY['Say hello.', 'What is SQL?', 'Name a fruit.']) WITH ORDINALITY AS u(p, i) ON u.i = g.ord;

-- Raw prompts, stop strings (the text ends before the stop), a system message.
SELECT peft_generate('smollm2', 'The capital of Italy is', options => '{"chat": false, "max_new_tokens": 8}') AS raw;
SELECT peft_generate('smollm2', 'List three colors, one per line.',
                     options => '{"stop": ["\n"], "max_new_tokens": 40}') AS first_line;
SELECT peft_generate('smollm2', 'What is your name?',
                     options => '{"system": "You are a pirate named Bob.", "max_new_tokens": 24}') <>
       peft_generate('smollm2', 'What is your name?', options => '{"max_new_tokens": 24}') AS system_used;

-- Sampling is repeatable with a seed.
SELECT peft_generate('smollm2', 'Tell me a joke.', options => '{"temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 3, "max_new_tokens": 16}') =
       peft_generate('smollm2', 'Tell me a joke.', options => '{"temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 3, "max_new_tokens": 16}') AS seeded_repeatable;

-- A statement timeout stops a long generation within a decoding step.
SET statement_timeout = '300ms';
SELECT peft_generate('smollm2', 'Write a very long story.', options => '{"max_new_tokens": 4000}');
RESET statement_timeout;

-- Bad options and arguments.
SELECT peft_generate('smollm2', 'hi', options => '{"bogus": 1}');
SELECT peft_generate('smollm2', 'hi', options => '[1]');
SELECT peft_generate('smollm2', 'hi', options => '{"max_new_tokens": 0}');
SELECT peft_generate('smollm2', 'hi', options => '{"max_new_tokens": 2.5}');
SELECT peft_generate('smollm2', 'hi', options => '{"temperature": -1}');
SELECT peft_generate('smollm2', 'hi', options => '{"top_p": 0}');
SELECT peft_generate('smollm2', 'hi', options => '{"top_k": "many"}');
SELECT peft_generate('smollm2', 'hi', options => '{"stop": [""]}');
SELECT peft_generate('smollm2', 'hi', options => '{"stop": {"a": 1}}');
SELECT peft_generate('smollm2', 'hi', options => '{"chat": "yes"}');
SELECT peft_generate('smollm2', 'hi', options => '{"chat": false, "system": "be brief"}');
SELECT peft_generate('smollm2', 'hi', options => NULL);
SELECT peft_generate(NULL, 'hi');
SELECT * FROM peft_generate('smollm2', NULL::text[]);
SELECT * FROM peft_generate('smollm2', ARRAY[['a', 'b']]);
SELECT peft_generate('smollm2', 'hi', adapter => 'some_adapter');
SELECT peft_generate('nosuchmodel', 'hi');

-- Decoders and encoders each refuse what only the other does.
SELECT peft_register_model('tiny_encoder', :'tiny_model') IS NOT NULL AS registered;
SELECT peft_generate('tiny_encoder', 'hi');
SELECT peft_embed('smollm2', 'hi');
SELECT peft_train('gen_adapter', 'smollm2', 'SELECT ''a'' AS input, ''x'' AS label UNION ALL SELECT ''b'', ''y''', wait => true);
SELECT count(*) FROM peft.models WHERE name IN ('smollm2', 'smollm2_dir');
