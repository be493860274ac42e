#include "dataset_source.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "../base/fs.h"
#include "str_buf.h"

static char *dup_or_null(const char *s) { return s ? xstrndup(s, strlen(s)) : NULL; }

static void set_name(char **field, const cJSON *obj, const char *key, const char *fallback, int use_fallback) {
    free(*field);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsString(v)) *field = dup_or_null(v->valuestring);
    else *field = use_fallback ? dup_or_null(fallback) : NULL;
}

void dataset_attr_free(DatasetAttr *a) {
    char **fields[] = {&a->name,         &a->file_name,   &a->prompt,          &a->query,         &a->response,
                       &a->history,      &a->messages,    &a->system,          &a->tools,         &a->images,
                       &a->role_tag,     &a->content_tag, &a->user_tag,        &a->assistant_tag, &a->observation_tag,
                       &a->function_tag, &a->system_tag};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        free(*fields[i]);
        *fields[i] = NULL;
    }
}

int dataset_attr_load(DatasetAttr *a, const char *dir, const char *name, Error *err) {
    memset(a, 0, sizeof *a);
    char path[4096];
    if (path_join(path, sizeof path, dir, "dataset_info.json", err)) return -1;
    char *text;
    size_t size;
    if (read_file(path, (size_t)64 << 20, &text, &size, err)) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return error_set(err, "%s: not a JSON object", path);
    }
    int rc = -1;
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!cJSON_IsObject(entry)) {
        error_set(err, "%s: undefined dataset '%s'", path, name);
        goto done;
    }
    if (cJSON_GetObjectItemCaseSensitive(entry, "hf_hub_url") || cJSON_GetObjectItemCaseSensitive(entry, "ms_hub_url") ||
        cJSON_GetObjectItemCaseSensitive(entry, "om_hub_url") || cJSON_GetObjectItemCaseSensitive(entry, "script_url")) {
        error_set(err, "%s: dataset '%s' is a hub or script dataset; vlft reads local files only (file_name)", path, name);
        goto done;
    }
    const cJSON *file_name = cJSON_GetObjectItemCaseSensitive(entry, "file_name");
    if (!cJSON_IsString(file_name) || !file_name->valuestring[0]) {
        error_set(err, "%s: dataset '%s' has no file_name", path, name);
        goto done;
    }
    const cJSON *formatting = cJSON_GetObjectItemCaseSensitive(entry, "formatting");
    if (formatting && !cJSON_IsString(formatting)) {
        error_set(err, "%s: dataset '%s': formatting must be a string", path, name);
        goto done;
    }
    if (!formatting || strcmp(formatting->valuestring, "alpaca") == 0) a->sharegpt = 0;
    else if (strcmp(formatting->valuestring, "sharegpt") == 0) a->sharegpt = 1;
    else {
        error_set(err, "%s: dataset '%s': formatting '%s' is not alpaca or sharegpt", path, name, formatting->valuestring);
        goto done;
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(entry, "ranking"))) {
        error_set(err, "%s: dataset '%s' is a ranking dataset, not applicable to sft", path, name);
        goto done;
    }
    if (cJSON_GetObjectItemCaseSensitive(entry, "num_samples")) {
        error_set(err, "%s: dataset '%s': num_samples (random resampling) is not supported; use max_samples", path, name);
        goto done;
    }
    a->name = dup_or_null(name);
    a->file_name = dup_or_null(file_name->valuestring);
    const cJSON *columns = cJSON_GetObjectItemCaseSensitive(entry, "columns");
    const cJSON *tags = cJSON_GetObjectItemCaseSensitive(entry, "tags");
    if ((columns && !cJSON_IsObject(columns)) || (tags && !cJSON_IsObject(tags))) {
        error_set(err, "%s: dataset '%s': columns and tags must be objects", path, name);
        goto done;
    }
    int c = columns != NULL, t = tags != NULL;
    set_name(&a->prompt, columns, "prompt", "instruction", !c);
    set_name(&a->query, columns, "query", "input", !c);
    set_name(&a->response, columns, "response", "output", !c);
    set_name(&a->history, columns, "history", NULL, !c);
    set_name(&a->messages, columns, "messages", "conversations", !c);
    set_name(&a->system, columns, "system", NULL, !c);
    set_name(&a->tools, columns, "tools", NULL, !c);
    set_name(&a->images, columns, "images", NULL, !c);
    set_name(&a->role_tag, tags, "role_tag", "from", !t);
    set_name(&a->content_tag, tags, "content_tag", "value", !t);
    set_name(&a->user_tag, tags, "user_tag", "human", !t);
    set_name(&a->assistant_tag, tags, "assistant_tag", "gpt", !t);
    set_name(&a->observation_tag, tags, "observation_tag", "observation", !t);
    set_name(&a->function_tag, tags, "function_tag", "function_call", !t);
    set_name(&a->system_tag, tags, "system_tag", "system", !t);
    rc = 0;
done:
    cJSON_Delete(root);
    if (rc) dataset_attr_free(a);
    return rc;
}

void conversation_free(Conversation *c) {
    for (int i = 0; i < c->n_prompt + c->n_response; i++) free(c->messages[i].content);
    free(c->messages);
    free(c->system);
    for (int i = 0; i < c->n_images; i++) free(c->images[i]);
    free(c->images);
    memset(c, 0, sizeof *c);
}

static const cJSON *column(const cJSON *row, const char *name) {
    return name ? cJSON_GetObjectItemCaseSensitive(row, name) : NULL;
}

static void push_message(Conversation *c, int *capacity, MessageRole role, const char *content) {
    int n = c->n_prompt + c->n_response;
    if (n == *capacity) {
        *capacity = *capacity ? *capacity * 2 : 8;
        c->messages = xrealloc(c->messages, (size_t)*capacity * sizeof *c->messages);
    }
    c->messages[n].role = role;
    c->messages[n].content = dup_or_null(content ? content : "");
    c->n_prompt++;  // the caller moves the last one to the response when needed
}

static int tag_is(const char *tag, const char *value) { return tag && strcmp(tag, value) == 0; }

// LLaMA-Factory's _find_medias: a list (or one value) of paths, each joined
// to dataset_dir when that file exists there, else kept as given.
static int convert_images(Conversation *c, const DatasetAttr *a, const cJSON *row, const char *dir, const char *where,
                          Error *err) {
    const cJSON *v = column(row, a->images);
    if (!v || cJSON_IsNull(v)) return 0;
    const cJSON *single[1] = {v};
    int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : 1;
    c->images = xcalloc((size_t)n + 1, sizeof(char *));
    for (int i = 0; i < n; i++) {
        const cJSON *item = cJSON_IsArray(v) ? cJSON_GetArrayItem(v, i) : single[0];
        if (!cJSON_IsString(item)) return error_set(err, "%s: image %d is not a path string", where, i);
        char joined[8192];
        int fits = (size_t)snprintf(joined, sizeof joined, "%s/%s", dir, item->valuestring) < sizeof joined;
        c->images[c->n_images++] =
            dup_or_null(fits && file_exists(joined) && item->valuestring[0] ? joined : item->valuestring);
    }
    return 0;
}

static int convert_alpaca(Conversation *c, const DatasetAttr *a, const cJSON *row, const char *where, Error *err) {
    int capacity = 0;
    const cJSON *history = column(row, a->history);
    if (cJSON_IsArray(history)) {
        const cJSON *pair;
        cJSON_ArrayForEach(pair, history) {
            if (!cJSON_IsArray(pair) || cJSON_GetArraySize(pair) != 2 || !cJSON_IsString(cJSON_GetArrayItem(pair, 0)) ||
                !cJSON_IsString(cJSON_GetArrayItem(pair, 1)))
                return error_set(err, "%s: history entries must be [prompt, response] string pairs", where);
            push_message(c, &capacity, ROLE_USER, cJSON_GetArrayItem(pair, 0)->valuestring);
            push_message(c, &capacity, ROLE_ASSISTANT, cJSON_GetArrayItem(pair, 1)->valuestring);
        }
    }
    StrBuf query = {0};
    str_buf_append(&query, "", 0);
    const cJSON *parts[2] = {column(row, a->prompt), column(row, a->query)};
    for (int i = 0; i < 2; i++) {
        const cJSON *p = parts[i];
        if (!p || cJSON_IsNull(p) || (cJSON_IsString(p) && !p->valuestring[0])) continue;
        if (!cJSON_IsString(p)) {
            str_buf_free(&query);
            return error_set(err, "%s: column '%s' is not a string", where, i == 0 ? a->prompt : a->query);
        }
        if (query.length) str_buf_append_char(&query, '\n');
        str_buf_append_str(&query, p->valuestring);
    }
    push_message(c, &capacity, ROLE_USER, query.data);
    str_buf_free(&query);
    const cJSON *response = column(row, a->response);
    if (cJSON_IsString(response)) {
        push_message(c, &capacity, ROLE_ASSISTANT, response->valuestring);
        c->n_prompt--;
        c->n_response = 1;
    }
    const cJSON *system = column(row, a->system);
    c->system = dup_or_null(cJSON_IsString(system) ? system->valuestring : "");
    return 0;
}

static int convert_sharegpt(Conversation *c, const DatasetAttr *a, const cJSON *row, const char *where, int *broken,
                            Error *err) {
    const cJSON *messages = column(row, a->messages);
    if (!cJSON_IsArray(messages))
        return error_set(err, "%s: column '%s' is missing or not a list", where, a->messages ? a->messages : "(none)");
    int n = cJSON_GetArraySize(messages);
    for (int i = 0; i < n; i++) {
        const cJSON *m = cJSON_GetArrayItem(messages, i);
        const cJSON *role = column(m, a->role_tag), *content = column(m, a->content_tag);
        if (!cJSON_IsObject(m) || !cJSON_IsString(role) || !cJSON_IsString(content))
            return error_set(err, "%s: message %d lacks string '%s' and '%s' fields", where, i,
                             a->role_tag ? a->role_tag : "(none)", a->content_tag ? a->content_tag : "(none)");
    }
    int start = 0;
    const cJSON *system_col = column(row, a->system);
    const char *system = cJSON_IsString(system_col) ? system_col->valuestring : "";
    if (a->system_tag && n > 0 &&
        tag_is(a->system_tag, column(cJSON_GetArrayItem(messages, 0), a->role_tag)->valuestring)) {
        system = column(cJSON_GetArrayItem(messages, 0), a->content_tag)->valuestring;
        start = 1;
    }
    c->system = dup_or_null(system);
    int capacity = 0;
    *broken = 0;
    for (int i = start; i < n && !*broken; i++) {
        const cJSON *m = cJSON_GetArrayItem(messages, i);
        const char *role = column(m, a->role_tag)->valuestring;
        const char *content = column(m, a->content_tag)->valuestring;
        int turn = i - start;
        if (turn % 2 == 0) {
            if (tag_is(a->user_tag, role)) push_message(c, &capacity, ROLE_USER, content);
            else if (tag_is(a->observation_tag, role)) push_message(c, &capacity, ROLE_OBSERVATION, content);
            else *broken = 1;
        } else {
            if (tag_is(a->assistant_tag, role)) push_message(c, &capacity, ROLE_ASSISTANT, content);
            else if (tag_is(a->function_tag, role))
                return error_set(err, "%s: function-call messages are not supported", where);
            else *broken = 1;
        }
    }
    int count = c->n_prompt;
    if (*broken || count % 2 != 0) {
        *broken = 1;
        for (int i = 0; i < count; i++) free(c->messages[i].content);
        c->n_prompt = 0;
        return 0;
    }
    if (count > 0) {
        c->n_prompt = count - 1;
        c->n_response = 1;
    }
    return 0;
}

static int convert_row(Conversation *c, const DatasetAttr *a, const cJSON *row, const char *dir, const char *where,
                       Error *err) {
    if (!cJSON_IsObject(row)) return error_set(err, "%s: not a JSON object", where);
    const cJSON *tools = column(row, a->tools);
    if (cJSON_IsString(tools) && tools->valuestring[0])
        return error_set(err, "%s: tool descriptions are not supported", where);
    int broken = 0;
    if (a->sharegpt ? convert_sharegpt(c, a, row, where, &broken, err) : convert_alpaca(c, a, row, where, err)) return -1;
    return convert_images(c, a, row, dir, where, err);
}

// Parses a .json file (one array of rows, or JSON lines as Hugging Face's
// json loader also accepts) or a .jsonl file into an array of row objects.
static cJSON *parse_rows(const char *path, const char *text, size_t size, Error *err) {
    const char *ext = strrchr(path, '.');
    int jsonl = ext && strcmp(ext, ".jsonl") == 0;
    if (!jsonl) {
        cJSON *all = cJSON_ParseWithLength(text, size);
        if (cJSON_IsArray(all)) return all;
        if (cJSON_IsObject(all)) {
            cJSON_Delete(all);
            error_set(err, "%s: expected a list of samples, found an object", path);
            return NULL;
        }
        cJSON_Delete(all);
    }
    cJSON *rows = cJSON_CreateArray();
    size_t pos = 0;
    int line = 0;
    while (pos < size) {
        const char *nl = memchr(text + pos, '\n', size - pos);
        size_t end = nl ? (size_t)(nl - text) : size;
        line++;
        size_t a = pos;
        while (a < end && (text[a] == ' ' || text[a] == '\t' || text[a] == '\r')) a++;
        if (a < end) {
            cJSON *row = cJSON_ParseWithLength(text + a, end - a);
            if (!row) {
                cJSON_Delete(rows);
                error_set(err, "%s: line %d is not valid JSON", path, line);
                return NULL;
            }
            cJSON_AddItemToArray(rows, row);
        }
        pos = end + 1;
    }
    return rows;
}

static int name_compare(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// The data files of an entry: the file, or every file of the folder
// (sorted), all of one type (json or jsonl).
static int list_files(const char *local, char ***files, int *n_files, Error *err) {
    *files = NULL;
    *n_files = 0;
    if (dir_exists(local)) {
        DIR *d = opendir(local);
        if (!d) return error_set(err, "%s: cannot open folder", local);
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            *files = xrealloc(*files, (size_t)(*n_files + 1) * sizeof(char *));
            size_t len = strlen(local) + strlen(e->d_name) + 2;
            (*files)[*n_files] = xmalloc(len);
            snprintf((*files)[*n_files], len, "%s/%s", local, e->d_name);
            (*n_files)++;
        }
        closedir(d);
        qsort(*files, (size_t)*n_files, sizeof(char *), name_compare);
        if (*n_files == 0) return error_set(err, "%s: folder holds no data files", local);
    } else if (file_exists(local)) {
        *files = xmalloc(sizeof(char *));
        (*files)[0] = dup_or_null(local);
        *n_files = 1;
    } else {
        return error_set(err, "%s: file not found", local);
    }
    const char *first_ext = strrchr((*files)[0], '.');
    for (int i = 0; i < *n_files; i++) {
        const char *ext = strrchr((*files)[i], '.');
        if (!ext || (strcmp(ext, ".json") != 0 && strcmp(ext, ".jsonl") != 0))
            return error_set(err, "%s: unsupported data file type (vlft reads .json and .jsonl)", (*files)[i]);
        if (strcmp(ext, first_ext) != 0) return error_set(err, "%s: file types in one dataset must be identical", local);
    }
    return 0;
}

int dataset_path_inside(const char *path, const char *root) {
    char *real = realpath(path, NULL);
    if (real == NULL) return 0;
    size_t n = strlen(root);
    int inside = strncmp(real, root, n) == 0 && (real[n] == '/' || real[n] == '\0' || strcmp(root, "/") == 0);
    free(real);
    return inside;
}

int dataset_read_rows(const DatasetAttr *a, const char *dir, const char *root, int max_samples, Conversation **rows,
                      int *n_rows, Error *err) {
    char local[4096];
    if (path_join(local, sizeof local, dir, a->file_name, err)) return -1;
    char **files;
    int n_files;
    int rc = list_files(local, &files, &n_files, err);
    int row_index = 0;
    for (int f = 0; rc == 0 && f < n_files; f++) {
        if (root && !dataset_path_inside(files[f], root)) {
            rc = error_set(err,
                           "%s: dataset '%s' file lies outside dataset_dir %s ('..' or a symlink); set "
                           "allow_paths_outside_dataset_dir: true to allow it",
                           files[f], a->name, root);
            break;
        }
        char *text;
        size_t size;
        if (read_file(files[f], (size_t)4 << 30, &text, &size, err)) {
            rc = -1;
            break;
        }
        cJSON *data = parse_rows(files[f], text, size, err);
        free(text);
        if (!data) {
            rc = -1;
            break;
        }
        const cJSON *row;
        cJSON_ArrayForEach(row, data) {
            if (max_samples > 0 && row_index >= max_samples) break;
            char where[4352];
            snprintf(where, sizeof where, "%s: dataset '%s' sample %d", files[f], a->name, row_index);
            *rows = xrealloc(*rows, (size_t)(*n_rows + 1) * sizeof **rows);
            Conversation *c = &(*rows)[*n_rows];
            memset(c, 0, sizeof *c);
            c->dataset_name = a->name;
            c->row = row_index;
            (*n_rows)++;
            if (convert_row(c, a, row, dir, where, err)) {
                rc = -1;
                break;
            }
            row_index++;
        }
        cJSON_Delete(data);
    }
    for (int f = 0; f < n_files; f++) free(files[f]);
    free(files);
    return rc;
}
