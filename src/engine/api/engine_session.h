/*
 * engine_session.h - the functions behind the PeftEngineApi table (see
 * engine_api.h for what each does).  Float-only: double-precision test
 * builds leave this file out.
 */
#ifndef PEFT_ENGINE_SESSION_H
#define PEFT_ENGINE_SESSION_H

#include "engine_api.h"
#include "bert.h"
#include "network.h"
#include "trainer.h"

/* Network options of a training configuration (also used by tests). */
PeftCode	session_network_options(const PeftTrainConfig *c, const BertModel *bert,
									NetworkOptions *o, PeftError *err);

void		session_configure(const PeftEngineSettings *settings);
const char *session_train_device(PeftTrainJob *job);
void		session_train_memory(PeftTrainJob *job, PeftTrainMemory *memory);
PeftCode	session_model_open(const char *dir, PeftModelHandle **out,
							   PeftModelInfo *info, PeftError *err);
void		session_model_close(PeftModelHandle *model);
PeftCode	session_adapter_open(PeftModelHandle *model, const char *config,
								 size_t config_len, const uint8_t *weights,
								 size_t weights_len, PeftTask task,
								 int num_labels, PeftAdapterHandle **out,
								 PeftError *err);
void		session_adapter_close(PeftAdapterHandle *adapter);
size_t		session_adapter_memory(PeftAdapterHandle *adapter);
PeftCode	session_adapter_inspect(PeftModelHandle *model, const char *config,
									size_t config_len, const uint8_t *weights,
									size_t weights_len, PeftAdapterInfo *info,
									PeftError *err);
PeftCode	session_adapter_merge(PeftAdapterHandle *adapter, PeftError *err);
PeftCode	session_adapter_combine(PeftModelHandle *model, int n,
									const char *const *configs, const size_t *config_lens,
									const uint8_t *const *weights, const size_t *weights_lens,
									const double *factors, const char *combination,
									const char *base_model, uint8_t **out_weights,
									size_t *out_weights_len, char **out_config,
									PeftError *err);
PeftCode	session_embed(PeftModelHandle *model, PeftAdapterHandle *adapter,
						  const char *const *texts, const size_t *lengths,
						  int n, int max_length, float *out, PeftError *err);
PeftCode	session_predict(PeftAdapterHandle *adapter, const char *const *texts,
							const size_t *lengths, int n, int max_length,
							float *out, PeftError *err);
PeftCode	session_predict_mixed(PeftAdapterHandle *const *adapters, const char *const *texts,
								  const size_t *lengths, const int *max_lengths, int n,
								  float *out, int ldo, PeftError *err);
PeftCode	session_embed_mixed(PeftModelHandle *model, PeftAdapterHandle *const *adapters,
								const char *const *texts, const size_t *lengths,
								const int *max_lengths, int n, float *out, PeftError *err);
PeftCode	session_check_targets(const char *const *names, int count, PeftError *err);
PeftCode	session_train_begin(PeftModelHandle *model,
								const PeftTrainConfig *config,
								PeftTrainJob **out, PeftError *err);
PeftCode	session_train_hold_out(PeftTrainJob *job, PeftError *err);
PeftCode	session_train_add_row(PeftTrainJob *job, const char *text,
								  size_t len, int label, double target,
								  PeftError *err);
PeftCode	session_train_prepare(PeftTrainJob *job, int num_labels,
								  const int *label_map, int64_t *train_rows,
								  int64_t *valid_rows, int *total_steps,
								  PeftError *err);
PeftCode	session_train_step(PeftTrainJob *job, PeftTrainProgress *progress,
							   PeftError *err);
PeftCode	session_train_evaluate(PeftTrainJob *job, PeftMetrics *metrics,
								   PeftError *err);
PeftCode	session_train_export(PeftTrainJob *job, const char *base_model,
								 uint8_t **weights, size_t *weights_len,
								 char **config, PeftError *err);
void		session_train_free(PeftTrainJob *job);
int64_t		session_train_parameters(PeftTrainJob *job);
int			session_train_max_length(PeftTrainJob *job);
PeftCode	session_profile_start(PeftDevice device, bool time_products, PeftError *err);
PeftCode	session_profile_read(PeftDevice device, PeftProfile *profile, PeftError *err);

PeftCode	session_generate(PeftModelHandle *model, PeftAdapterHandle *adapter,
							 const char *const *prompts, const size_t *lengths, int n,
							 const PeftGenerateOptions *options, PeftGeneration *out,
							 PeftError *err);
PeftCode	session_generate_mixed(PeftModelHandle *model, PeftAdapterHandle *const *adapters,
								   const char *const *prompts, const size_t *lengths, int n,
								   const PeftGenerateOptions *options, PeftGeneration *out,
								   PeftError *err);
PeftCode	session_stream_create(PeftModelHandle *model, int slots, size_t cache_bytes,
								  PeftGenStream **out, PeftError *err);
PeftCode	session_stream_add(PeftGenStream *st, PeftAdapterHandle *adapter, const char *prompt,
							   size_t len, const PeftGenerateOptions *options, int index, uint64_t tag,
							   bool *alone, PeftError *err);
bool		session_stream_cancel(PeftGenStream *st, uint64_t tag);
PeftCode	session_stream_step(PeftGenStream *st, PeftStreamResult **results, int *nresults,
								PeftError *err);
int			session_stream_pending(PeftGenStream *st);
void		session_stream_free(PeftGenStream *st);
PeftCode	session_train_add_pair(PeftTrainJob *job, const char *prompt, size_t prompt_len,
								   const char *completion, size_t completion_len,
								   PeftError *err);
PeftCode	session_adapter_export_gguf(PeftModelHandle *model, const char *config,
										size_t config_len, const uint8_t *weights,
										size_t weights_len, uint8_t **out, size_t *out_len,
										PeftError *err);
PeftCode	session_tokenize(PeftModelHandle *model, const char *text, size_t len, bool chat,
							 const char *system, int32_t **ids, int *n, PeftError *err);
PeftCode	session_logits(PeftModelHandle *model, PeftAdapterHandle *adapter, const int32_t *ids, int n,
						   float *out, PeftError *err);

#endif
