/* The C ABI end to end: load, generate, decode, text, every error path, freeing, and the
 * version.
 * Run under valgrind by `make c-test`; argv[1] is shared_schema/golden. */
#include "infer_rs.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks = 0;
static int failures = 0;

#define CHECK(cond, ...)                                        \
    do {                                                        \
        checks++;                                               \
        if (!(cond)) {                                          \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                       \
            fprintf(stderr, "\n");                              \
            failures++;                                         \
        }                                                       \
    } while (0)

static void path_of(char *buf, size_t len, const char *dir, const char *name) {
    snprintf(buf, len, "%s/%s.safetensors", dir, name);
}

/* A golden file read whole: the JSON header (NUL-terminated) and the tensor bytes. */
typedef struct {
    char *header;
    unsigned char *data;
} Golden;

static int golden_read(const char *path, Golden *g) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    unsigned char len_bytes[8];
    int ok = fread(len_bytes, 1, 8, f) == 8;
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--) len = (len << 8) | len_bytes[i];
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    ok = ok && len < (uint64_t)size;
    g->header = ok ? calloc(1, len + 1) : NULL;
    g->data = ok ? malloc((size_t)size - 8 - len) : NULL;
    fseek(f, 8, SEEK_SET);
    ok = ok && g->header && g->data && fread(g->header, 1, len, f) == len &&
         fread(g->data, 1, (size_t)size - 8 - len, f) == (size_t)size - 8 - len;
    fclose(f);
    return ok;
}

static void golden_free(Golden *g) {
    free(g->header);
    free(g->data);
}

/* The F32 tensor NAME: its start in g->data and its element count (0 if absent). */
static const float *golden_tensor(const Golden *g, const char *name, size_t *count) {
    char key[128];
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *at = strstr(g->header, key);
    unsigned long from = 0, to = 0;
    at = at ? strstr(at, "\"data_offsets\":[") : NULL;
    if (!at || sscanf(at, "\"data_offsets\":[%lu,%lu]", &from, &to) != 2) {
        *count = 0;
        return NULL;
    }
    *count = (to - from) / sizeof(float);
    return (const float *)(g->data + from);
}

/* The tolerance train/golden.py stored for output NAME: the metadata value "tolerance" is
 * a JSON object written as a JSON string, so its keys appear with escaped quotes. */
static double golden_tolerance(const Golden *g, const char *name) {
    char key[128];
    snprintf(key, sizeof key, "\\\"%s\\\": ", name);
    const char *at = strstr(g->header, key);
    return at ? strtod(at + strlen(key), NULL) : -1.0;
}

/* The string metadata value NAME of a golden file, its JSON escapes undone, in a buffer
 * the caller frees; NULL if absent or if it holds an escape other than \n, \" and \\. */
static char *golden_text(const Golden *g, const char *name) {
    char key[128];
    snprintf(key, sizeof key, "\"%s\":\"", name);
    const char *at = strstr(g->header, key);
    if (!at) return NULL;
    at += strlen(key);
    char *text = calloc(1, strlen(at) + 1);
    size_t n = 0;
    for (; text && *at && *at != '"'; at++) {
        if (*at != '\\') {
            text[n++] = *at;
            continue;
        }
        at++;
        if (*at == 'n' || *at == '"' || *at == '\\') {
            text[n++] = *at == 'n' ? '\n' : *at;
        } else {
            free(text);
            return NULL;
        }
    }
    return text;
}

static void test_vae(const char *dir) {
    char path[1024];
    path_of(path, sizeof path, dir, "vae_tiny");
    InferModel *model = NULL;
    InferStatus st = infer_model_load(path, &model);
    CHECK(st == INFER_OK && model != NULL, "load: %d %s", st, infer_last_error());
    CHECK(strcmp(infer_model_arch(model), "vae") == 0, "arch");

    InferMatrix images = {0};
    st = infer_generate(model, 3, 42, &images);
    CHECK(st == INFER_OK, "generate: %s", infer_last_error());
    CHECK(images.rows == 3 && images.cols == 16, "shape %zux%zu", images.rows, images.cols);
    for (size_t i = 0; i < images.rows * images.cols; i++)
        CHECK(images.data[i] > 0.0f && images.data[i] < 1.0f, "pixel %zu = %f", i, images.data[i]);

    InferMatrix again = {0};
    infer_generate(model, 3, 42, &again);
    CHECK(memcmp(images.data, again.data, 3 * 16 * sizeof(float)) == 0, "same seed, same images");
    infer_matrix_free(&again);
    infer_matrix_free(&images);
    CHECK(images.data == NULL && images.rows == 0, "free clears the matrix");

    float z[2 * 4] = {0.1f, -0.2f, 0.3f, 0.0f, 1.0f, 1.0f, -1.0f, 0.5f};
    InferMatrix decoded = {0};
    CHECK(infer_decode(model, z, 2, 4, &decoded) == INFER_OK, "decode: %s", infer_last_error());
    CHECK(decoded.rows == 2 && decoded.cols == 16, "decode shape");
    infer_matrix_free(&decoded);

    CHECK(infer_decode(model, z, 4, 2, &decoded) == INFER_ERR_ARGUMENT, "wrong width is refused");
    CHECK(strstr(infer_last_error(), "width 2") != NULL, "message: %s", infer_last_error());
    z[3] = NAN;
    CHECK(infer_decode(model, z, 2, 4, &decoded) == INFER_ERR_ARGUMENT, "NaN is refused");
    CHECK(infer_generate(model, 0, 1, &decoded) == INFER_ERR_ARGUMENT, "n = 0 is refused");
    CHECK(infer_generate(model, 100000, 1, &decoded) == INFER_ERR_TOO_LARGE, "n too large is refused");
    char *text = NULL;
    CHECK(infer_generate_text(model, "hi", 5, 0.0f, 0, 0, &text) == INFER_ERR_ARGUMENT && text == NULL,
          "a VAE has no generate_text");
    CHECK(infer_generate(NULL, 1, 1, &decoded) == INFER_ERR_NULL, "NULL model");
    infer_model_free(model);
}

/* decode(z) of the golden VAE equals PyTorch's within the stored reassociation tolerance. */
static void test_golden_decode(const char *dir) {
    char path[1024];
    snprintf(path, sizeof path, "%s/vae_tiny.golden.safetensors", dir);
    Golden g = {0};
    CHECK(golden_read(path, &g), "read %s", path);
    size_t nz = 0, nx = 0;
    const float *z = g.header ? golden_tensor(&g, "decode.z", &nz) : NULL;
    const float *want = g.header ? golden_tensor(&g, "decode.x", &nx) : NULL;
    double tol = g.header ? golden_tolerance(&g, "decode.x") : -1.0;
    CHECK(z && want && nz == 5 * 4 && nx == 5 * 16 && tol > 0, "golden tensors and tolerance");
    path_of(path, sizeof path, dir, "vae_tiny");
    InferModel *model = NULL;
    InferMatrix x = {0};
    if (z && want && infer_model_load(path, &model) == INFER_OK &&
        infer_decode(model, z, 5, 4, &x) == INFER_OK) {
        double worst = 0.0;
        for (size_t i = 0; i < nx; i++) worst = fmax(worst, fabs((double)x.data[i] - want[i]));
        CHECK(worst <= tol, "decode max abs diff %g > tolerance %g", worst, tol);
    } else {
        CHECK(0, "golden decode: %s", infer_last_error());
    }
    infer_matrix_free(&x);
    infer_model_free(model);
    golden_free(&g);
}

static void test_gpt(const char *dir) {
    char path[1024];
    path_of(path, sizeof path, dir, "gpt_tiny");
    InferModel *model = NULL;
    CHECK(infer_model_load(path, &model) == INFER_OK, "load gpt: %s", infer_last_error());
    char *text = NULL;
    InferStatus st = infer_generate_text(model, "hi, bad", 20, 0.0f, 0, 0, &text);
    CHECK(st == INFER_OK && text != NULL, "generate_text: %s", infer_last_error());
    /* the greedy continuation stored in gpt_tiny.golden.safetensors, as text */
    snprintf(path, sizeof path, "%s/gpt_tiny.golden.safetensors", dir);
    Golden g = {0};
    CHECK(golden_read(path, &g), "read %s", path);
    char *want = g.header ? golden_text(&g, "greedy_past_block.text") : NULL;
    CHECK(want != NULL, "greedy_past_block.text in %s", path);
    CHECK(text && want && strcmp(text, want) == 0, "greedy text: %s, want %s", text, want);
    free(want);
    golden_free(&g);
    infer_string_free(text);
    CHECK(infer_generate_text(model, "hi Z", 5, 0.0f, 0, 0, &text) == INFER_ERR_ARGUMENT, "unknown char");
    CHECK(strstr(infer_last_error(), "vocabulary") != NULL, "message: %s", infer_last_error());
    infer_model_free(model);
}

static void test_errors(const char *dir) {
    InferModel *model = (InferModel *)0x1;
    CHECK(infer_model_load("/nonexistent/model.safetensors", &model) == INFER_ERR_IO, "bad path");
    CHECK(model == NULL, "out is cleared on failure");
    CHECK(strlen(infer_last_error()) > 0, "a message for the bad path");
    CHECK(infer_model_load(NULL, &model) == INFER_ERR_NULL, "NULL path");

    char path[1024];
    snprintf(path, sizeof path, "%s/../wire/limits.json", dir);
    CHECK(infer_model_load(path, &model) == INFER_ERR_CORRUPT, "a JSON file is not a model: %s",
          infer_last_error());

    path_of(path, sizeof path, dir, "gpt_tiny");
    InferMatrix m = {0};
    CHECK(infer_vae_generate(path, 2, 0, &m) == INFER_ERR_ARGUMENT, "infer_vae_generate on a GPT");
    infer_model_free(NULL);
    infer_matrix_free(NULL);
    infer_string_free(NULL);
}

static void test_one_call(const char *dir) {
    char path[1024];
    path_of(path, sizeof path, dir, "vae_tiny");
    InferMatrix m = {0};
    CHECK(infer_vae_generate(path, 4, 7, &m) == INFER_OK, "infer_vae_generate: %s", infer_last_error());
    CHECK(m.rows == 4 && m.cols == 16, "infer_vae_generate shape");
    infer_vae_free(&m);
}

/* The library's version is the one in the header this test was built with. */
static void test_version(void) {
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", INFER_RS_VERSION_MAJOR, INFER_RS_VERSION_MINOR,
             INFER_RS_VERSION_PATCH);
    CHECK(strcmp(infer_version(), want) == 0, "infer_version() %s, macros %s", infer_version(), want);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s GOLDEN_DIR\n", argv[0]);
        return 2;
    }
    test_vae(argv[1]);
    test_golden_decode(argv[1]);
    test_gpt(argv[1]);
    test_errors(argv[1]);
    test_one_call(argv[1]);
    test_version();
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
