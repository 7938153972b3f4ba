//! C ABI over `infer_core`. Errors map to an `InferStatus` code in one place
//! ([`status_of`]) and leave their message in a thread-local slot read by
//! `infer_last_error`. Every entry point catches panics.
//!
//! The header, `include/infer_rs.h`, is cbindgen's output for this file under
//! `cbindgen.toml`, with the version macros of the crate's version: the doc comments here
//! are its comments. `cargo test -p infer_rs_c` fails when the two differ;
//! `INFER_RS_WRITE_HEADER=1 cargo test -p infer_rs_c` writes the header anew.

use infer_core::{Arch, InferError, Matrix, Model, Rows, Sampling};
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

/// What a call did: `INFER_OK`, or why it failed (`infer_last_error()` says more).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)] // the C names, which cbindgen copies
pub enum InferStatus {
    INFER_OK = 0,
    /// the file could not be read
    INFER_ERR_IO = 1,
    /// not a valid safetensors file
    INFER_ERR_CORRUPT = 2,
    /// missing or invalid metadata, unknown architecture or version
    INFER_ERR_METADATA = 3,
    /// missing, unexpected, misshapen or non-f32 tensor
    INFER_ERR_TENSOR = 4,
    /// invalid argument, an op the model's architecture lacks, or a bad INFER_RS_ISA
    INFER_ERR_ARGUMENT = 5,
    /// a size above its limit
    INFER_ERR_TOO_LARGE = 6,
    /// the tensor library failed
    INFER_ERR_COMPUTE = 7,
    /// a required pointer was NULL, or a string not UTF-8
    INFER_ERR_NULL = 8,
    /// a bug in the engine; the call was contained
    INFER_ERR_PANIC = 9,
}

/// A loaded model, opaque; free it with infer_model_free.
pub struct InferModel(Model);

/// Row-major f32 output; free it with infer_matrix_free (or infer_vae_free).
#[repr(C)]
pub struct InferMatrix {
    pub data: *mut f32,
    pub rows: usize,
    pub cols: usize,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = text);
}

/// The one mapping from core errors to status codes.
fn status_of(err: &InferError) -> InferStatus {
    match err {
        InferError::Io { .. } => InferStatus::INFER_ERR_IO,
        InferError::Corrupt { .. } => InferStatus::INFER_ERR_CORRUPT,
        InferError::MissingMetadata { .. }
        | InferError::BadMetadata { .. }
        | InferError::UnknownArchitecture { .. }
        | InferError::UnsupportedSchemaVersion { .. } => InferStatus::INFER_ERR_METADATA,
        InferError::TensorNotFound { .. }
        | InferError::UnexpectedTensor { .. }
        | InferError::ShapeMismatch { .. }
        | InferError::UnsupportedDtype { .. } => InferStatus::INFER_ERR_TENSOR,
        InferError::InvalidArgument(_)
        | InferError::WrongArchitecture { .. }
        | InferError::UnsupportedIsa { .. } => InferStatus::INFER_ERR_ARGUMENT,
        InferError::TooLarge { .. } => InferStatus::INFER_ERR_TOO_LARGE,
        // the C ABI runs generations unwatched: a stop cannot happen through it
        InferError::Compute(_) | InferError::Stopped { .. } => InferStatus::INFER_ERR_COMPUTE,
    }
}

/// Run `body`, turning an error or a panic into a status and a message.
fn guarded(body: impl FnOnce() -> Result<(), (InferStatus, String)>) -> InferStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_error("");
            InferStatus::INFER_OK
        }
        Ok(Err((status, message))) => {
            set_error(&message);
            status
        }
        Err(_) => {
            set_error("the engine panicked; this is a bug");
            InferStatus::INFER_ERR_PANIC
        }
    }
}

fn core<T>(result: infer_core::Result<T>) -> Result<T, (InferStatus, String)> {
    result.map_err(|e| (status_of(&e), e.to_string()))
}

fn null(what: &str) -> (InferStatus, String) {
    (InferStatus::INFER_ERR_NULL, format!("{what} is NULL"))
}

/// # Safety
/// `text` is NULL or a NUL-terminated string.
unsafe fn utf8<'a>(text: *const c_char, what: &str) -> Result<&'a str, (InferStatus, String)> {
    if text.is_null() {
        return Err(null(what));
    }
    CStr::from_ptr(text)
        .to_str()
        .map_err(|_| (InferStatus::INFER_ERR_NULL, format!("{what} is not UTF-8")))
}

fn write_matrix(m: Matrix, out: &mut InferMatrix) {
    let data: Box<[f32]> = m.data.into_boxed_slice();
    out.rows = m.rows;
    out.cols = m.cols;
    out.data = Box::into_raw(data).cast::<f32>();
}

/// Load and check a model. On success *out owns it; free with infer_model_free.
///
/// # Safety
/// `path` is a NUL-terminated string; `out` points to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn infer_model_load(
    path: *const c_char,
    out: *mut *mut InferModel,
) -> InferStatus {
    guarded(|| {
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        *out = ptr::null_mut();
        let model = core(Model::load(utf8(path, "path")?))?;
        *out = Box::into_raw(Box::new(InferModel(model)));
        Ok(())
    })
}

/// Free a model (NULL is a no-op).
///
/// # Safety
/// `model` is NULL or came from `infer_model_load` and is freed once.
#[no_mangle]
pub unsafe extern "C" fn infer_model_free(model: *mut InferModel) {
    if !model.is_null() {
        drop(Box::from_raw(model));
    }
}

/// "vae", "wgan" or "gpt" (a static string), or NULL for a NULL model.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn infer_model_arch(model: *const InferModel) -> *const c_char {
    match model.as_ref().map(|m| m.0.arch()) {
        Some(Arch::Vae) => c"vae".as_ptr(),
        Some(Arch::Wgan) => c"wgan".as_ptr(),
        Some(Arch::Gpt) => c"gpt".as_ptr(),
        None => ptr::null(),
    }
}

/// n images from seed (VAE in [0, 1], WGAN in [-1, 1]).
///
/// # Safety
/// `model` is a live model; `out` points to an `InferMatrix`.
#[no_mangle]
pub unsafe extern "C" fn infer_generate(
    model: *const InferModel,
    n: usize,
    seed: u64,
    out: *mut InferMatrix,
) -> InferStatus {
    guarded(|| {
        let model = model.as_ref().ok_or_else(|| null("model"))?;
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        write_matrix(core(model.0.generate(n, seed))?, out);
        Ok(())
    })
}

/// Images from `rows` latent rows of width `cols` (row-major).
///
/// # Safety
/// `z` points to `rows * cols` floats; `model` is live; `out` points to an `InferMatrix`.
#[no_mangle]
pub unsafe extern "C" fn infer_decode(
    model: *const InferModel,
    z: *const f32,
    rows: usize,
    cols: usize,
    out: *mut InferMatrix,
) -> InferStatus {
    guarded(|| {
        let model = model.as_ref().ok_or_else(|| null("model"))?;
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        if z.is_null() {
            return Err(null("z"));
        }
        let count = rows.checked_mul(cols).ok_or((
            InferStatus::INFER_ERR_TOO_LARGE,
            "rows * cols overflows".into(),
        ))?;
        let data = std::slice::from_raw_parts(z, count);
        write_matrix(core(model.0.decode(Rows { data, width: cols }))?, out);
        Ok(())
    })
}

/// GPT: prompt plus up to max_new_tokens characters; temperature 0 is greedy, top_k 0 keeps
/// all. *out is a NUL-terminated UTF-8 string; free it with infer_string_free.
///
/// # Safety
/// `model` is live; `prompt` is a NUL-terminated UTF-8 string; `out` points to a `char*`.
#[no_mangle]
pub unsafe extern "C" fn infer_generate_text(
    model: *const InferModel,
    prompt: *const c_char,
    max_new_tokens: usize,
    temperature: f32,
    top_k: usize,
    seed: u64,
    out: *mut *mut c_char,
) -> InferStatus {
    guarded(|| {
        let model = model.as_ref().ok_or_else(|| null("model"))?;
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        *out = ptr::null_mut();
        let sampling = Sampling {
            temperature,
            top_k: (top_k > 0).then_some(top_k),
            seed,
        };
        let text = core(
            model
                .0
                .generate_text(utf8(prompt, "prompt")?, max_new_tokens, sampling),
        )?;
        let text = CString::new(text).map_err(|_| {
            (
                InferStatus::INFER_ERR_ARGUMENT,
                "generated text holds a NUL".into(),
            )
        })?;
        *out = text.into_raw();
        Ok(())
    })
}

/// Free a matrix's data and zero it (NULL is a no-op).
///
/// # Safety
/// `m` is NULL or a matrix filled by this library and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn infer_matrix_free(m: *mut InferMatrix) {
    if let Some(m) = m.as_mut() {
        if !m.data.is_null() {
            let len = m.rows * m.cols;
            drop(Box::from_raw(ptr::slice_from_raw_parts_mut(m.data, len)));
        }
        m.data = ptr::null_mut();
        m.rows = 0;
        m.cols = 0;
    }
}

/// Free a string this library returned (NULL is a no-op).
///
/// # Safety
/// `s` is NULL or a string returned by this library and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn infer_string_free(s: *mut c_char) {
    if !s.is_null() {
        drop(CString::from_raw(s));
    }
}

/// The message of this thread's last failure ("" if none); valid until its next call here.
#[no_mangle]
pub extern "C" fn infer_last_error() -> *const c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ptr())
}

/// "MAJOR.MINOR.PATCH" of the library (a static string); the INFER_RS_VERSION_* macros
/// give the version of the header a program was built with.
#[no_mangle]
pub extern "C" fn infer_version() -> *const c_char {
    const VERSION: &str = concat!(
        env!("CARGO_PKG_VERSION_MAJOR"),
        ".",
        env!("CARGO_PKG_VERSION_MINOR"),
        ".",
        env!("CARGO_PKG_VERSION_PATCH"),
        "\0"
    );
    VERSION.as_ptr().cast()
}

/// One call: load the VAE at path and generate n images.
///
/// # Safety
/// `path` is a NUL-terminated string; `out` points to an `InferMatrix`.
#[no_mangle]
pub unsafe extern "C" fn infer_vae_generate(
    path: *const c_char,
    n: usize,
    seed: u64,
    out: *mut InferMatrix,
) -> InferStatus {
    guarded(|| {
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        write_matrix(
            core(Model::vae_generate(utf8(path, "path")?, n, seed))?,
            out,
        );
        Ok(())
    })
}

/// Free what infer_vae_generate returned (the same as infer_matrix_free).
///
/// # Safety
/// As `infer_matrix_free`.
#[no_mangle]
pub unsafe extern "C" fn infer_vae_free(m: *mut InferMatrix) {
    infer_matrix_free(m)
}
