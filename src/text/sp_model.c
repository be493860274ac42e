#include "sp_model.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../base/fs.h"
#include "str_buf.h"

// A bounded view of protobuf bytes.
typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} Wire;

static int read_varint(Wire *w, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (w->p >= w->end) return -1;
        unsigned char b = *w->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

// Reads one field header and, for length-delimited fields, the sub-view.
typedef struct {
    uint32_t number;
    int wire_type;
    uint64_t varint;
    uint32_t fixed32;
    Wire bytes;
} Field;

static int read_field(Wire *w, Field *f) {
    uint64_t key;
    if (read_varint(w, &key)) return -1;
    f->number = (uint32_t)(key >> 3);
    f->wire_type = (int)(key & 7);
    switch (f->wire_type) {
    case 0: return read_varint(w, &f->varint);
    case 1:
        if (w->end - w->p < 8) return -1;
        w->p += 8;
        return 0;
    case 2: {
        uint64_t n;
        if (read_varint(w, &n)) return -1;
        if (n > (uint64_t)(w->end - w->p)) return -1;
        f->bytes.p = w->p;
        f->bytes.end = w->p + n;
        w->p += n;
        return 0;
    }
    case 5:
        if (w->end - w->p < 4) return -1;
        memcpy(&f->fixed32, w->p, 4);  // little-endian hosts only (x86, arm64)
        w->p += 4;
        return 0;
    default: return -1;
    }
}

static int parse_piece(SpPiece *piece, Wire w) {
    piece->text = NULL;
    piece->length = 0;
    piece->score = 0;
    piece->type = SP_NORMAL;
    while (w.p < w.end) {
        Field f;
        if (read_field(&w, &f)) return -1;
        if (f.number == 1 && f.wire_type == 2) {
            free(piece->text);
            piece->length = (size_t)(f.bytes.end - f.bytes.p);
            piece->text = xstrndup((const char *)f.bytes.p, piece->length);
        } else if (f.number == 2 && f.wire_type == 5) {
            memcpy(&piece->score, &f.fixed32, 4);
        } else if (f.number == 3 && f.wire_type == 0) {
            piece->type = (SpPieceType)f.varint;
        }
    }
    if (!piece->text) piece->text = xstrndup("", 0);
    return 0;
}

static int parse_trainer_spec(SpModel *m, Wire w) {
    while (w.p < w.end) {
        Field f;
        if (read_field(&w, &f)) return -1;
        if (f.wire_type != 0) continue;
        int v = (int)(int64_t)f.varint;
        switch (f.number) {
        case 3: m->model_type = (SpModelType)v; break;
        case 24: m->treat_whitespace_as_suffix = v != 0; break;
        case 25: m->split_digits = v != 0; break;
        case 35: m->byte_fallback = v != 0; break;
        case 40: m->unk_id = v; break;
        case 41: m->bos_id = v; break;
        case 42: m->eos_id = v; break;
        case 43: m->pad_id = v; break;
        default: break;
        }
    }
    return 0;
}

static int parse_normalizer_spec(SpModel *m, Wire w) {
    while (w.p < w.end) {
        Field f;
        if (read_field(&w, &f)) return -1;
        if (f.number == 1 && f.wire_type == 2) {
            size_t n = (size_t)(f.bytes.end - f.bytes.p);
            if (n >= sizeof m->normalizer_name) n = sizeof m->normalizer_name - 1;
            memcpy(m->normalizer_name, f.bytes.p, n);
            m->normalizer_name[n] = 0;
        } else if (f.number == 2 && f.wire_type == 2) {
            m->has_charsmap = f.bytes.end > f.bytes.p;
        } else if (f.wire_type == 0) {
            if (f.number == 3) m->add_dummy_prefix = f.varint != 0;
            if (f.number == 4) m->remove_extra_whitespaces = f.varint != 0;
            if (f.number == 5) m->escape_whitespaces = f.varint != 0;
        }
    }
    return 0;
}

int sp_model_parse(SpModel *m, const unsigned char *data, size_t size, const char *path, Error *err) {
    memset(m, 0, sizeof *m);
    // proto2 defaults
    m->model_type = SP_MODEL_UNIGRAM;
    m->unk_id = 0;
    m->bos_id = 1;
    m->eos_id = 2;
    m->pad_id = -1;
    m->add_dummy_prefix = 1;
    m->remove_extra_whitespaces = 1;
    m->escape_whitespaces = 1;
    Wire w = {data, data + size};
    int capacity = 0;
    while (w.p < w.end) {
        Field f;
        if (read_field(&w, &f)) {
            sp_model_free(m);
            return error_set(err, "%s: not a SentencePiece model (malformed protobuf at byte %zu)", path,
                             (size_t)(w.p - data));
        }
        if (f.wire_type != 2) continue;
        int bad = 0;
        if (f.number == 1) {
            if (m->n_pieces == capacity) {
                capacity = capacity ? capacity * 2 : 1024;
                m->pieces = xrealloc(m->pieces, (size_t)capacity * sizeof *m->pieces);
            }
            bad = parse_piece(&m->pieces[m->n_pieces], f.bytes);
            m->n_pieces++;
        } else if (f.number == 2) {
            bad = parse_trainer_spec(m, f.bytes);
        } else if (f.number == 3) {
            bad = parse_normalizer_spec(m, f.bytes);
        }
        if (bad) {
            sp_model_free(m);
            return error_set(err, "%s: not a SentencePiece model (malformed field %u)", path, f.number);
        }
    }
    if (m->n_pieces == 0) {
        sp_model_free(m);
        return error_set(err, "%s: SentencePiece model has no pieces", path);
    }
    for (int i = 0; i < m->n_pieces; i++) {
        SpPieceType t = m->pieces[i].type;
        if (t < SP_NORMAL || t > SP_BYTE) {
            int type = (int)t;
            sp_model_free(m);
            return error_set(err, "%s: piece %d has unknown type %d", path, i, type);
        }
        if (m->pieces[i].length == 0 && t == SP_NORMAL) {
            sp_model_free(m);
            return error_set(err, "%s: piece %d is empty", path, i);
        }
    }
    if (m->unk_id < 0 || m->unk_id >= m->n_pieces || m->pieces[m->unk_id].type != SP_UNKNOWN) {
        sp_model_free(m);
        return error_set(err, "%s: unk_id does not name an unknown piece", path);
    }
    return 0;
}

int sp_model_load(SpModel *m, const char *path, Error *err) {
    char *data;
    size_t size;
    if (read_file(path, (size_t)1 << 30, &data, &size, err)) return -1;
    int rc = sp_model_parse(m, (const unsigned char *)data, size, path, err);
    free(data);
    return rc;
}

void sp_model_free(SpModel *m) {
    if (m->pieces)
        for (int i = 0; i < m->n_pieces; i++) free(m->pieces[i].text);
    free(m->pieces);
    memset(m, 0, sizeof *m);
}
