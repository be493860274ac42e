// template.h - LLaMA-Factory's chat templates (data/template.py at the pinned
// commit): how system text, user turns and answers become token ids.
//
// A formatter is a list of slots: text with a "{{content}}" placeholder
// (replaced once per slot), or the BOS / EOS token. Every text slot is
// tokenized on its own without special tokens. Turn 0 is prefix + system +
// first user message; the system slot is used when the sample's system text
// (or the template's default) is non-empty.
#ifndef VLFT_TEXT_TEMPLATE_H
#define VLFT_TEXT_TEMPLATE_H

#include "../base/error.h"
#include "str_buf.h"
#include "tokenizer.h"

typedef enum { SLOT_NONE = 0, SLOT_TEXT, SLOT_BOS, SLOT_EOS } SlotKind;

typedef struct {
    SlotKind kind;
    const char *text;  // SLOT_TEXT
} Slot;

enum { TEMPLATE_MAX_SLOTS = 4 };

typedef struct {
    const char *name;
    Slot user[TEMPLATE_MAX_SLOTS];
    Slot assistant[TEMPLATE_MAX_SLOTS];
    Slot system[TEMPLATE_MAX_SLOTS];
    Slot prefix[TEMPLATE_MAX_SLOTS];
    const char *default_system;
    const char *stop_words[2];  // NULL-terminated
    int efficient_eos;          // one EOS at the very end; EOS label on later prompts
    int llava_plugin;           // mm_plugin "llava": each <image> becomes image_seq_length image tokens
} ChatTemplate;

typedef enum { ROLE_USER, ROLE_ASSISTANT, ROLE_OBSERVATION } MessageRole;

typedef struct {
    MessageRole role;
    char *content;
} Message;

// The template registered under name, or NULL. Known: default, empty,
// alpaca, vicuna, llava, yi_vl.
const ChatTemplate *template_find(const char *name);
// The names, comma-separated, for error messages.
const char *template_names(void);

// fix_special_tokens: pad falls back to EOS; stop words become special
// tokens (new ids after the existing ones). Fails when there is no EOS.
int template_fix_tokenizer(const ChatTemplate *tpl, Tokenizer *tokenizer, Error *err);

// Encodes messages (user / assistant alternating, user first) into one id
// list per message: ids of message i are out[i] (out has n_messages IntVecs,
// zeroed by the caller, freed by the caller).
void template_encode_messages(const ChatTemplate *tpl, Tokenizer *tokenizer, const Message *messages, int n_messages,
                              const char *system, IntVec *out);

#endif
