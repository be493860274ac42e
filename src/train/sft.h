// sft.h - one supervised fine-tuning session: everything a recipe names
// (tokenizer, dataset, image preprocessing, the LLaVA model with its
// trainable parameters) loaded and checked, and presented to the trainer as
// a TrainModel whose forward_backward builds right-padded batches of
// samples with their preprocessed images (decoded ahead in a worker thread).
#ifndef VLFT_SFT_H
#define VLFT_SFT_H

#include <stdio.h>

#include "../base/error.h"
#include "../model/llava.h"
#include "../text/dataset.h"
#include "../text/tokenizer.h"
#include "../vision/clip_preprocess.h"
#include "../vision/prefetch.h"
#include "recipe.h"
#include "trainer.h"

typedef struct {
    const Recipe *recipe;
    ModelConfig config;
    Tokenizer *tokenizer;
    Dataset dataset;
    ClipConfig clip;
    ImageBounds bounds;
    LlavaModel *model;
    int pad_id;
    int is_lora;
    // the images of the planned micro-batches, decoded ahead
    Prefetcher *prefetcher;
    int *planned_ids;
    int *planned_sizes;
    int *planned_offsets;
    int n_planned, next_planned;
    char **job_paths;  // storage behind the prefetch jobs
    // batch buffers (grown as needed)
    int32_t *input_ids, *labels, *attention_mask;
    size_t batch_capacity;
    float *pixels;
    size_t pixel_capacity;
} SftSession;

// Loads and checks everything before any training work; log gets the
// dataset's warnings and a summary (may be NULL).
int sft_open(SftSession *session, const Recipe *recipe, FILE *log, Error *err);
void sft_close(SftSession *session);
// The TrainModel view of the session for trainer_run.
TrainModel sft_train_model(SftSession *session);

#endif
