// template.c - the templates vlft ships, restated from LLaMA-Factory's
// register_template calls, and the encoding of one conversation.
#include "template.h"

#include <stdlib.h>
#include <string.h>

#define TEXT(s) {SLOT_TEXT, s}
#define BOS {SLOT_BOS, NULL}
#define EOS {SLOT_EOS, NULL}

static const char VICUNA_SYSTEM[] =
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.";

static const char YI_VL_SYSTEM[] =
    "This is a chat between an inquisitive human and an AI assistant. "
    "Assume the role of the AI assistant. Read all the images carefully, "
    "and respond to the human's questions with informative, helpful, detailed and polite answers. "
    "\xe8\xbf\x99\xe6\x98\xaf\xe4\xb8\x80\xe4\xb8\xaa\xe5\xa5\xbd\xe5\xa5\x87\xe7\x9a\x84\xe4\xba\xba\xe7\xb1\xbb"
    "\xe5\x92\x8c\xe4\xb8\x80\xe4\xb8\xaa\xe4\xba\xba\xe5\xb7\xa5\xe6\x99\xba\xe8\x83\xbd\xe5\x8a\xa9\xe6\x89\x8b"
    "\xe4\xb9\x8b\xe9\x97\xb4\xe7\x9a\x84\xe5\xaf\xb9\xe8\xaf\x9d\xe3\x80\x82\xe5\x81\x87\xe8\xae\xbe\xe4\xbd\xa0"
    "\xe6\x89\xae\xe6\xbc\x94\xe8\xbf\x99\xe4\xb8\xaa" "AI"
    "\xe5\x8a\xa9\xe6\x89\x8b\xe7\x9a\x84\xe8\xa7\x92\xe8\x89\xb2\xe3\x80\x82"
    "\xe4\xbb\x94\xe7\xbb\x86\xe9\x98\x85\xe8\xaf\xbb\xe6\x89\x80\xe6\x9c\x89\xe7\x9a\x84\xe5\x9b\xbe\xe5\x83\x8f"
    "\xef\xbc\x8c\xe5\xb9\xb6\xe5\xaf\xb9\xe4\xba\xba\xe7\xb1\xbb\xe7\x9a\x84\xe9\x97\xae\xe9\xa2\x98\xe5\x81\x9a"
    "\xe5\x87\xba\xe4\xbf\xa1\xe6\x81\xaf\xe4\xb8\xb0\xe5\xaf\x8c\xe3\x80\x81\xe6\x9c\x89\xe5\xb8\xae\xe5\x8a\xa9"
    "\xe3\x80\x81\xe8\xaf\xa6\xe7\xbb\x86\xe7\x9a\x84\xe5\x92\x8c\xe7\xa4\xbc\xe8\xb2\x8c\xe7\x9a\x84\xe5\x9b\x9e"
    "\xe7\xad\x94\xe3\x80\x82\n\n";

// Unset formatters take register_template's defaults: user and system
// "{{content}}", assistant "{{content}}" + EOS ("{{content}}" alone with
// efficient_eos), empty prefix.
static const ChatTemplate TEMPLATES[] = {
    {.name = "default",
     .user = {TEXT("Human: {{content}}"), EOS, TEXT("\nAssistant:")},
     .assistant = {TEXT("{{content}}"), EOS, TEXT("\n")},
     .system = {TEXT("System: {{content}}"), EOS, TEXT("\n")},
     .default_system = ""},
    {.name = "empty",
     .user = {TEXT("{{content}}")},
     .assistant = {TEXT("{{content}}")},
     .system = {TEXT("{{content}}")},
     .default_system = ""},
    {.name = "alpaca",
     .user = {TEXT("### Instruction:\n{{content}}\n\n### Response:\n")},
     .assistant = {TEXT("{{content}}"), EOS, TEXT("\n\n")},
     .system = {TEXT("{{content}}")},
     .default_system = "Below is an instruction that describes a task. "
                       "Write a response that appropriately completes the request.\n\n"},
    {.name = "vicuna",
     .user = {TEXT("USER: {{content}} ASSISTANT:")},
     .assistant = {TEXT("{{content}}"), EOS},
     .system = {TEXT("{{content}}")},
     .default_system = VICUNA_SYSTEM},
    {.name = "llava",
     .user = {TEXT("USER: {{content}} ASSISTANT:")},
     .assistant = {TEXT("{{content}}"), EOS},
     .system = {TEXT("{{content}}")},
     .default_system = VICUNA_SYSTEM,
     .llava_plugin = 1},
    {.name = "yi_vl",
     .user = {TEXT("### Human: {{content}}\n### Assistant:")},
     .assistant = {TEXT("{{content}}\n")},
     .system = {TEXT("{{content}}")},
     .default_system = YI_VL_SYSTEM,
     .stop_words = {"###", NULL},
     .efficient_eos = 1,
     .llava_plugin = 1},
};

#undef TEXT
#undef BOS
#undef EOS

const ChatTemplate *template_find(const char *name) {
    for (size_t i = 0; i < sizeof TEMPLATES / sizeof TEMPLATES[0]; i++)
        if (strcmp(TEMPLATES[i].name, name) == 0) return &TEMPLATES[i];
    return NULL;
}

const char *template_names(void) { return "default, empty, alpaca, vicuna, llava, yi_vl"; }

int template_fix_tokenizer(const ChatTemplate *tpl, Tokenizer *tokenizer, Error *err) {
    if (tokenizer_eos_id(tokenizer) < 0)
        return error_set(err, "template %s: the tokenizer has no EOS token (set eos_token in tokenizer_config.json)",
                         tpl->name);
    if (tokenizer_pad_id(tokenizer) < 0) tokenizer_set_pad_id(tokenizer, tokenizer_eos_id(tokenizer));
    for (int i = 0; tpl->stop_words[i]; i++) tokenizer_add_special_token(tokenizer, tpl->stop_words[i]);
    return 0;
}

// Formatter.apply + _convert_elements_to_ids for one formatter.
static void encode_slots(const Slot *slots, const char *content, Tokenizer *tokenizer, IntVec *out) {
    for (int i = 0; i < TEMPLATE_MAX_SLOTS && slots[i].kind != SLOT_NONE; i++) {
        const Slot *s = &slots[i];
        if (s->kind == SLOT_BOS || s->kind == SLOT_EOS) {
            int id = s->kind == SLOT_BOS ? tokenizer_bos_id(tokenizer) : tokenizer_eos_id(tokenizer);
            if (id >= 0) int_vec_push(out, id);
            continue;
        }
        StrBuf text = {0};
        str_buf_append(&text, "", 0);
        const char *at = content ? strstr(s->text, "{{content}}") : NULL;
        if (at) {
            str_buf_append(&text, s->text, (size_t)(at - s->text));
            str_buf_append_str(&text, content);
            str_buf_append_str(&text, at + strlen("{{content}}"));
        } else {
            str_buf_append_str(&text, s->text);
        }
        if (text.length > 0) {
            int *ids;
            int n = tokenizer_encode(tokenizer, text.data, text.length, &ids);
            int_vec_append(out, ids, n);
            free(ids);
        }
        str_buf_free(&text);
    }
}

void template_encode_messages(const ChatTemplate *tpl, Tokenizer *tokenizer, const Message *messages, int n_messages,
                              const char *system, IntVec *out) {
    if (!system || !system[0]) system = tpl->default_system;
    for (int i = 0; i < n_messages; i++) {
        if (i == 0) {
            encode_slots(tpl->prefix, NULL, tokenizer, &out[i]);
            if (system && system[0]) encode_slots(tpl->system, system, tokenizer, &out[i]);
        }
        const Slot *slots = messages[i].role == ROLE_ASSISTANT ? tpl->assistant : tpl->user;
        encode_slots(slots, messages[i].content, tokenizer, &out[i]);
    }
}
