// dataset.h - LLaMA-Factory's data pipeline for supervised fine-tuning: the
// datasets a recipe names, read through dataset_info.json, converted
// (alpaca / sharegpt), encoded with a chat template, truncated to cutoff_len
// and split into train / eval, with the same ids, labels and order as
// LLaMA-Factory at the pinned commit (data/loader.py, converter.py,
// processor/supervised.py, data_utils.py).
//
// Order of operations, as LLaMA-Factory: per dataset (in the order named)
// read the file(s), keep the first max_samples rows, convert; concatenate;
// drop malformed samples (counted, one warning); encode; split val_size off
// with Hugging Face datasets' train_test_split (numpy default_rng(seed)
// permutation: eval = its first n_eval indices, train = the rest, in
// permutation order). With eval_dataset, its samples (in file order) are
// the eval list instead; LLaMA-Factory keeps several eval datasets apart,
// vlft concatenates them.
//
// Image paths are resolved against dataset_dir as LLaMA-Factory does and
// must exist and be readable: a missing one is an error naming the dataset,
// the sample and the path, before any training starts.
//
// Files from the internet must not reach outside their folder: unless
// allow_paths_outside_dataset_dir is set (vlft's own recipe key), every data
// file and image must resolve (after "..", and symlinks followed) to a file
// inside dataset_dir; an absolute path or one that escapes is an error
// naming the dataset, the sample and the path. LLaMA-Factory has no such
// check.
#ifndef VLFT_TEXT_DATASET_H
#define VLFT_TEXT_DATASET_H

#include <stdio.h>

#include "../base/error.h"
#include "../model/config.h"
#include "../train/recipe.h"
#include "tokenizer.h"

enum { IGNORE_INDEX = -100 };

typedef struct {
    int *input_ids;      // length ids
    int *labels;         // length labels, IGNORE_INDEX where no loss
    int length;
    int n_images;
    char **image_paths;  // n_images resolved, readable paths, in <image> order
} Sample;

typedef struct {
    Sample *samples;
    int n_samples;
} SampleList;

// The trainer takes these lists as they are: train id i is
// train.samples[i] (already split as trainer_split_ids would), eval id i is
// eval.samples[i].
typedef struct {
    SampleList train;
    SampleList eval;
    int n_rows;     // rows read from the files (after max_samples)
    int n_dropped;  // malformed samples dropped
} Dataset;

typedef struct {
    const char *dataset;        // comma-separated names in dataset_info.json
    const char *eval_dataset;   // NULL, or names whose samples form the eval list (then val_size must be 0)
    const char *dataset_dir;
    const char *template_name;  // NULL: "empty" (as LLaMA-Factory without a chat template)
    int cutoff_len;
    int max_samples;            // 0: all
    double val_size;            // 0: no eval split; < 1 a fraction, >= 1 a count
    int train_on_prompt;
    int mask_history;
    int allow_paths_outside_dataset_dir;
    int seed;
    int image_token_index;
    int image_seq_length;
} DatasetOptions;

// The options a recipe and a model config give.
void dataset_options_from_recipe(DatasetOptions *options, const Recipe *recipe, const ModelConfig *config);

// Loads and encodes. The template's stop words are added to the tokenizer
// as special tokens (as LLaMA-Factory does). Warnings go to log (may be NULL).
int dataset_load(Dataset *out, const DatasetOptions *options, Tokenizer *tokenizer, FILE *log, Error *err);
void dataset_free(Dataset *dataset);

#endif
