#include "utf8.h"

size_t utf8_char_length(const char *text, size_t n) {
    const unsigned char *s = (const unsigned char *)text;
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t need;
    unsigned min_second = 0x80, max_second = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) min_second = 0xA0;       // no overlong forms
        if (c == 0xED) max_second = 0x9F;       // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) min_second = 0x90;
        if (c == 0xF4) max_second = 0x8F;       // nothing above U+10FFFF
    } else return 0;
    if (n < need) return 0;
    if (s[1] < min_second || s[1] > max_second) return 0;
    for (size_t i = 2; i < need; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return need;
}

int utf8_valid(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t len = utf8_char_length(s + i, n - i);
        if (len == 0) return 0;
        i += len;
    }
    return 1;
}
