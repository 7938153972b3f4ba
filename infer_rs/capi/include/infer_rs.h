/* C interface of the infer_rs engine: load a model exported by train/, run it, free
 * what it returned. Every function returns an InferStatus; on failure
 * infer_last_error() describes what was wrong (per thread, valid until the next call).
 *
 * The library allocates through the process's malloc. With glibc's, long GPT
 * generations give heap memory back to the OS after every token and fault it in again
 * (about a tenth of their time); raise the trim threshold to avoid it, e.g.
 * GLIBC_TUNABLES=glibc.malloc.trim_threshold=67108864:glibc.malloc.mmap_threshold=67108864
 * (see docs/engine.md, Allocation).
 *
 * Written by cbindgen from infer_rs/capi/src/lib.rs (its doc comments are the comments
 * here) under infer_rs/capi/cbindgen.toml; `cargo test -p infer_rs_c` checks it, and
 * `INFER_RS_WRITE_HEADER=1 cargo test -p infer_rs_c` (in infer_rs/) writes it again. */

#ifndef INFER_RS_H
#define INFER_RS_H

#include <stddef.h>
#include <stdint.h>

// The version of this header; infer_version() gives the library's.
#define INFER_RS_VERSION_MAJOR 0
#define INFER_RS_VERSION_MINOR 1
#define INFER_RS_VERSION_PATCH 0

// What a call did: `INFER_OK`, or why it failed (`infer_last_error()` says more).
typedef enum {
    INFER_OK = 0,
    // the file could not be read
    INFER_ERR_IO = 1,
    // not a valid safetensors file
    INFER_ERR_CORRUPT = 2,
    // missing or invalid metadata, unknown architecture or version
    INFER_ERR_METADATA = 3,
    // missing, unexpected, misshapen or non-f32 tensor
    INFER_ERR_TENSOR = 4,
    // invalid argument, an op the model's architecture lacks, or a bad INFER_RS_ISA
    INFER_ERR_ARGUMENT = 5,
    // a size above its limit
    INFER_ERR_TOO_LARGE = 6,
    // the tensor library failed
    INFER_ERR_COMPUTE = 7,
    // a required pointer was NULL, or a string not UTF-8
    INFER_ERR_NULL = 8,
    // a bug in the engine; the call was contained
    INFER_ERR_PANIC = 9,
} InferStatus;

// A loaded model, opaque; free it with infer_model_free.
typedef struct InferModel InferModel;

// Row-major f32 output; free it with infer_matrix_free (or infer_vae_free).
typedef struct {
    float *data;
    size_t rows;
    size_t cols;
} InferMatrix;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// Load and check a model. On success *out owns it; free with infer_model_free.
//
// # Safety
// `path` is a NUL-terminated string; `out` points to writable storage for a pointer.
InferStatus infer_model_load(const char *path, InferModel **out);

// Free a model (NULL is a no-op).
//
// # Safety
// `model` is NULL or came from `infer_model_load` and is freed once.
void infer_model_free(InferModel *model);

// "vae", "wgan" or "gpt" (a static string), or NULL for a NULL model.
//
// # Safety
// `model` is NULL or a live model.
const char *infer_model_arch(const InferModel *model);

// n images from seed (VAE in [0, 1], WGAN in [-1, 1]).
//
// # Safety
// `model` is a live model; `out` points to an `InferMatrix`.
InferStatus infer_generate(const InferModel *model, size_t n, uint64_t seed, InferMatrix *out);

// Images from `rows` latent rows of width `cols` (row-major).
//
// # Safety
// `z` points to `rows * cols` floats; `model` is live; `out` points to an `InferMatrix`.
InferStatus infer_decode(const InferModel *model,
                         const float *z,
                         size_t rows,
                         size_t cols,
                         InferMatrix *out);

// GPT: prompt plus up to max_new_tokens characters; temperature 0 is greedy, top_k 0 keeps
// all. *out is a NUL-terminated UTF-8 string; free it with infer_string_free.
//
// # Safety
// `model` is live; `prompt` is a NUL-terminated UTF-8 string; `out` points to a `char*`.
InferStatus infer_generate_text(const InferModel *model,
                                const char *prompt,
                                size_t max_new_tokens,
                                float temperature,
                                size_t top_k,
                                uint64_t seed,
                                char **out);

// Free a matrix's data and zero it (NULL is a no-op).
//
// # Safety
// `m` is NULL or a matrix filled by this library and not yet freed.
void infer_matrix_free(InferMatrix *m);

// Free a string this library returned (NULL is a no-op).
//
// # Safety
// `s` is NULL or a string returned by this library and not yet freed.
void infer_string_free(char *s);

// The message of this thread's last failure ("" if none); valid until its next call here.
const char *infer_last_error(void);

// "MAJOR.MINOR.PATCH" of the library (a static string); the INFER_RS_VERSION_* macros
// give the version of the header a program was built with.
const char *infer_version(void);

// One call: load the VAE at path and generate n images.
//
// # Safety
// `path` is a NUL-terminated string; `out` points to an `InferMatrix`.
InferStatus infer_vae_generate(const char *path, size_t n, uint64_t seed, InferMatrix *out);

// Free what infer_vae_generate returned (the same as infer_matrix_free).
//
// # Safety
// As `infer_matrix_free`.
void infer_vae_free(InferMatrix *m);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* INFER_RS_H */
