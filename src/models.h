/*
 * models.h - registered base models: checks that a model folder on this
 * server is still the one that was registered.
 */
#ifndef PEFT_MODELS_H
#define PEFT_MODELS_H

#include "catalog.h"

/*
 * ERROR unless the model's folder exists on this server and its
 * model.safetensors has the size and modification time recorded when it
 * was registered (or last verified): a file changed afterwards must not be
 * used silently.  Cheap (one stat); called on every load.
 */
extern void CheckModelFiles(const CatalogModel *model);

#endif
