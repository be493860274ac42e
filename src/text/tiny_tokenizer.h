// tiny_tokenizer.h - the Yi-like tokenizer of the bundled tiny model, built
// into the vlft binary (the files of tests/data/tokenizers/yi_like, made by
// tools/make_tokenizer_fixtures.py): 1000 SentencePiece BPE pieces,
// <unk>=0 <|startoftext|>=1 <|endoftext|>=2, <image> added special token 1000,
// pad = <unk>, no BOS added (as Yi).
#ifndef VLFT_TEXT_TINY_TOKENIZER_H
#define VLFT_TEXT_TINY_TOKENIZER_H

#include "../base/error.h"

enum { TINY_TOKENIZER_IMAGE_TOKEN_ID = 1000 };

// Writes tokenizer.model, tokenizer.json, tokenizer_config.json and
// special_tokens_map.json into dir (atomically, each).
int tiny_tokenizer_write(const char *dir, Error *err);

#endif
