/* C interface of the infer_rs engine: load a model exported by train/, run it, free
 * what it returned. Every function returns an InferStatus; on failure
 * infer_last_error() describes what was wrong (per thread, valid until the next call).
 *
 * The library allocates through the process's malloc. With glibc's, long GPT
 * generations give heap memory back to the OS after every token and fault it in again
 * (about a tenth of their time); raise the trim threshold to avoid it, e.g.
 * GLIBC_TUNABLES=glibc.malloc.trim_threshold=67108864:glibc.malloc.mmap_threshold=67108864
 * (see docs/engine.md, Allocation). */
#ifndef INFER_RS_H
#define INFER_RS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    INFER_OK = 0,
    INFER_ERR_IO = 1,           /* the file could not be read */
    INFER_ERR_CORRUPT = 2,      /* not a valid safetensors file */
    INFER_ERR_METADATA = 3,     /* missing or invalid metadata, unknown architecture or version */
    INFER_ERR_TENSOR = 4,       /* missing, unexpected, misshapen or non-f32 tensor */
    INFER_ERR_ARGUMENT = 5,     /* invalid argument, an op the model's architecture lacks, or a bad INFER_RS_ISA */
    INFER_ERR_TOO_LARGE = 6,    /* a size above its limit */
    INFER_ERR_COMPUTE = 7,      /* the tensor library failed */
    INFER_ERR_NULL = 8,         /* a required pointer was NULL, or a string not UTF-8 */
    INFER_ERR_PANIC = 9         /* a bug in the engine; the call was contained */
} InferStatus;

typedef struct InferModel InferModel;

/* Row-major f32 output; free it with infer_matrix_free (or vae_free). */
typedef struct {
    float *data;
    size_t rows;
    size_t cols;
} InferMatrix;

/* Load and check a model. On success *out owns it; free with infer_model_free. */
InferStatus infer_model_load(const char *path, InferModel **out);
void infer_model_free(InferModel *model);

/* "vae", "wgan" or "gpt" (a static string), or NULL for a NULL model. */
const char *infer_model_arch(const InferModel *model);

/* n images from seed (VAE in [0, 1], WGAN in [-1, 1]). */
InferStatus infer_generate(const InferModel *model, size_t n, uint64_t seed, InferMatrix *out);
/* Images from `rows` latent rows of width `cols` (row-major). */
InferStatus infer_decode(const InferModel *model, const float *z, size_t rows, size_t cols, InferMatrix *out);
/* GPT: prompt plus up to max_new_tokens characters; temperature 0 is greedy, top_k 0 keeps all.
 * *out is a NUL-terminated UTF-8 string; free it with infer_string_free. */
InferStatus infer_generate_text(const InferModel *model, const char *prompt, size_t max_new_tokens,
                                float temperature, size_t top_k, uint64_t seed, char **out);

void infer_matrix_free(InferMatrix *m);
void infer_string_free(char *s);

/* The message of this thread's last failure ("" if none). */
const char *infer_last_error(void);

/* One call: load the VAE at path and generate n images. */
InferStatus vae_generate(const char *path, size_t n, uint64_t seed, InferMatrix *out);
/* Free what vae_generate returned (the same as infer_matrix_free). */
void vae_free(InferMatrix *m);

#ifdef __cplusplus
}
#endif
#endif /* INFER_RS_H */
