// sp_model.h - a SentencePiece model file (tokenizer.model) as plain data.
//
// The file is a protobuf ModelProto (sentencepiece_model.proto): repeated
// pieces (text, score, type), a TrainerSpec (model type, byte_fallback,
// split_digits, special ids) and a NormalizerSpec (add_dummy_prefix,
// remove_extra_whitespaces, escape_whitespaces, precompiled_charsmap). The
// parser walks the wire format directly and rejects anything that lies about
// lengths, so a truncated or hostile file is an error, never a crash.
#ifndef VLFT_TEXT_SP_MODEL_H
#define VLFT_TEXT_SP_MODEL_H

#include <stddef.h>

#include "../base/error.h"

typedef enum {
    SP_NORMAL = 1,
    SP_UNKNOWN = 2,
    SP_CONTROL = 3,
    SP_USER_DEFINED = 4,
    SP_UNUSED = 5,
    SP_BYTE = 6,
} SpPieceType;

typedef enum { SP_MODEL_UNIGRAM = 1, SP_MODEL_BPE = 2, SP_MODEL_WORD = 3, SP_MODEL_CHAR = 4 } SpModelType;

typedef struct {
    char *text;
    size_t length;
    float score;
    SpPieceType type;
} SpPiece;

typedef struct {
    SpPiece *pieces;
    int n_pieces;
    // TrainerSpec
    SpModelType model_type;
    int byte_fallback;
    int split_digits;
    int treat_whitespace_as_suffix;
    int unk_id, bos_id, eos_id, pad_id;
    // NormalizerSpec
    char normalizer_name[64];
    int has_charsmap;  // a non-empty precompiled_charsmap (NFKC etc.)
    int add_dummy_prefix;
    int remove_extra_whitespaces;
    int escape_whitespaces;
} SpModel;

// Parses the bytes of a .model file; path names the file in messages.
int sp_model_parse(SpModel *model, const unsigned char *data, size_t size, const char *path, Error *err);
int sp_model_load(SpModel *model, const char *path, Error *err);
void sp_model_free(SpModel *model);

#endif
