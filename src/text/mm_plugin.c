#include "mm_plugin.h"

#include <string.h>

#include "str_buf.h"

int mm_count_images(const char *s) {
    int n = 0;
    for (const char *p = strstr(s, IMAGE_PLACEHOLDER); p; p = strstr(p + strlen(IMAGE_PLACEHOLDER), IMAGE_PLACEHOLDER)) n++;
    return n;
}

// The image tokens are written as that many "<image>" strings, as
// LLaMA-Factory does; the tokenizer maps each to the image token id.
char *mm_expand_images(const char *s, int seq_length) {
    StrBuf out = {0};
    str_buf_append(&out, "", 0);
    const char *p = s;
    for (const char *hit; (hit = strstr(p, IMAGE_PLACEHOLDER)); p = hit + strlen(IMAGE_PLACEHOLDER)) {
        str_buf_append(&out, p, (size_t)(hit - p));
        for (int k = 0; k < seq_length; k++) str_buf_append_str(&out, IMAGE_PLACEHOLDER);
    }
    str_buf_append_str(&out, p);
    return out.data;
}
