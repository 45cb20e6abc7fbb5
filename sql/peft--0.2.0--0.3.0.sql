-- peft 0.2.0 -> 0.3.0 (ALTER EXTENSION peft UPDATE): the same changes as
-- in sql/peft--0.3.0.sql, for databases created at 0.2.0 (or updated to it).

\echo Use "ALTER EXTENSION peft UPDATE TO '0.3.0'" to load this file. \quit

-- Mixed-adapter batches (S-LoRA's): input i through the active version of
-- adapters[i], every adapter over one base model.  The base model's
-- products run once over the rows of many adapters; each adapter's method
-- and head on its own rows.  Every adapter is looked up as the caller
-- before anything is computed.  A NULL input gives a row of NULLs; a NULL
-- adapter is an error.
CREATE FUNCTION peft_predict(adapters text[], inputs text[])
    RETURNS TABLE(ord int, adapter text, label text, score float8)
    AS 'MODULE_PATHNAME', 'peft_predict_mixed'
    LANGUAGE C VOLATILE STRICT;

-- Sentence embeddings of input i through adapters[i] (NULL: the bare
-- model), in shared forward passes.  No default for adapters:
-- peft_embed(model, inputs) is the one-adapter form.
CREATE FUNCTION peft_embed(model text, inputs text[], adapters text[])
    RETURNS TABLE(ord int, embedding real[])
    AS 'MODULE_PATHNAME', 'peft_embed_mixed'
    LANGUAGE C VOLATILE STRICT;

-- Completions of prompt i through adapters[i] (NULL: the base model), every
-- adapter over model; each adapter's prompts are decoded together.
CREATE FUNCTION peft_generate(model text, prompts text[], adapters text[],
                              options jsonb DEFAULT '{}')
    RETURNS TABLE(ord int, adapter text, completion text, tokens int, finish_reason text)
    AS 'MODULE_PATHNAME', 'peft_generate_mixed'
    LANGUAGE C VOLATILE STRICT;

-- The adapters this connection keeps parsed (peft.adapter_cache_size),
-- most recently used first, and the bytes each holds.
CREATE FUNCTION peft_adapter_cache() RETURNS TABLE(adapter text, version int, bytes bigint)
    AS 'MODULE_PATHNAME', 'peft_adapter_cache'
    LANGUAGE C VOLATILE STRICT;
