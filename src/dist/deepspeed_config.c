#include "deepspeed_config.h"

#include <cJSON.h>
#include <stdlib.h>

#include "../base/fs.h"

int deepspeed_zero_stage(const char *path, int *stage, Error *err) {
    char *text;
    if (read_file(path, 1 << 20, &text, NULL, err) != 0) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (root == NULL || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return error_set(err, "%s: not a JSON object (a DeepSpeed config was expected)", path);
    }
    int rc = 0;
    *stage = 0;
    const cJSON *zero = cJSON_GetObjectItemCaseSensitive(root, "zero_optimization");
    if (zero != NULL) {
        const cJSON *value = cJSON_GetObjectItemCaseSensitive(zero, "stage");
        if (!cJSON_IsObject(zero)) rc = error_set(err, "%s: zero_optimization is not an object", path);
        else if (value == NULL) *stage = 0;
        else if (!cJSON_IsNumber(value) || value->valuedouble != (int)value->valuedouble || value->valueint < 0 ||
                 value->valueint > 3)
            rc = error_set(err, "%s: zero_optimization.stage must be 0, 1, 2 or 3", path);
        else *stage = value->valueint;
    }
    cJSON_Delete(root);
    return rc;
}
