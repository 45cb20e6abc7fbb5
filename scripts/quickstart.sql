-- The quick start's main job, run by scripts/quickstart in database peft_demo.
-- :model_dir is the all-MiniLM-L6-v2 folder fetched by scripts/fetch_model.
\pset footer off
CREATE EXTENSION IF NOT EXISTS peft;
SET client_min_messages = warning;
ALTER EXTENSION peft UPDATE;
RESET client_min_messages;
SELECT peft_version() AS peft, peft_engine_info() AS engine;
\echo
\echo 'peft is installed. Training and prediction (peft_register_model, peft_train,'
\echo 'peft_predict) arrive with the engine and SQL issues; this quick start will run'
\echo 'them on' :'model_dir' 'as soon as they land.'
