// dataset_source.h - one dataset_info.json entry and the rows of its files,
// converted to conversations (LLaMA-Factory's parser.py and converter.py).
#ifndef VLFT_TEXT_DATASET_SOURCE_H
#define VLFT_TEXT_DATASET_SOURCE_H

#include "../base/error.h"
#include "template.h"

// DatasetAttr: column and tag names; NULL where LLaMA-Factory has None
// (when "columns" / "tags" is given, every name it omits is None).
typedef struct {
    char *name;       // the key in dataset_info.json
    char *file_name;
    int sharegpt;     // formatting: 0 alpaca, 1 sharegpt
    char *prompt, *query, *response, *history, *messages, *system, *tools, *images;
    char *role_tag, *content_tag, *user_tag, *assistant_tag, *observation_tag, *function_tag, *system_tag;
} DatasetAttr;

// One converted row: prompt messages then the response.
typedef struct {
    Message *messages;  // n_prompt prompt messages followed by n_response responses
    int n_prompt;
    int n_response;
    char *system;
    char **images;      // resolved against dataset_dir (LLaMA-Factory's _find_medias)
    int n_images;
    const char *dataset_name;
    int row;            // index within its dataset, 0-based
} Conversation;

// Reads entry `name` of DIR/dataset_info.json.
int dataset_attr_load(DatasetAttr *attr, const char *dataset_dir, const char *name, Error *err);
void dataset_attr_free(DatasetAttr *attr);

// Reads the attr's file(s) under dataset_dir, keeps the first max_samples
// rows (0: all) and converts each. Appends to *rows / *n_rows.
// True when path, with every symlink and ".." resolved, names something
// inside the folder whose resolved path is root (or root itself).
int dataset_path_inside(const char *path, const char *root);
// root: dataset_dir's resolved path when every data file must lie inside it
// (else NULL).
int dataset_read_rows(const DatasetAttr *attr, const char *dataset_dir, const char *root, int max_samples, Conversation **rows,
                      int *n_rows, Error *err);
void conversation_free(Conversation *c);

#endif
