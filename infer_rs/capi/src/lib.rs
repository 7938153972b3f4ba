//! C ABI over `infer_core`; the header is `include/infer_rs.h`. Errors map to an
//! `InferStatus` code in one place ([`status_of`]) and leave their message in a
//! thread-local slot read by `infer_last_error`. Every entry point catches panics.

use infer_core::{Arch, InferError, Matrix, Model, Rows, Sampling};
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferStatus {
    Ok = 0,
    Io = 1,
    Corrupt = 2,
    Metadata = 3,
    Tensor = 4,
    Argument = 5,
    TooLarge = 6,
    Compute = 7,
    Null = 8,
    Panic = 9,
}

/// Row-major f32 output owned by the caller until `infer_matrix_free`.
#[repr(C)]
pub struct InferMatrix {
    pub data: *mut f32,
    pub rows: usize,
    pub cols: usize,
}

/// An opaque loaded model.
pub struct InferModel(Model);

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
        InferError::Io { .. } => InferStatus::Io,
        InferError::Corrupt { .. } => InferStatus::Corrupt,
        InferError::MissingMetadata { .. }
        | InferError::BadMetadata { .. }
        | InferError::UnknownArchitecture { .. }
        | InferError::UnsupportedSchemaVersion { .. } => InferStatus::Metadata,
        InferError::TensorNotFound { .. }
        | InferError::UnexpectedTensor { .. }
        | InferError::ShapeMismatch { .. }
        | InferError::UnsupportedDtype { .. } => InferStatus::Tensor,
        InferError::InvalidArgument(_)
        | InferError::WrongArchitecture { .. }
        | InferError::UnsupportedIsa { .. } => InferStatus::Argument,
        InferError::TooLarge { .. } => InferStatus::TooLarge,
        // the C ABI runs generations unwatched: a stop cannot happen through it
        InferError::Compute(_) | InferError::Stopped { .. } => InferStatus::Compute,
    }
}

/// Run `body`, turning an error or a panic into a status and a message.
fn guarded(body: impl FnOnce() -> Result<(), (InferStatus, String)>) -> InferStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_error("");
            InferStatus::Ok
        }
        Ok(Err((status, message))) => {
            set_error(&message);
            status
        }
        Err(_) => {
            set_error("the engine panicked; this is a bug");
            InferStatus::Panic
        }
    }
}

fn core<T>(result: infer_core::Result<T>) -> Result<T, (InferStatus, String)> {
    result.map_err(|e| (status_of(&e), e.to_string()))
}

fn null(what: &str) -> (InferStatus, String) {
    (InferStatus::Null, format!("{what} is NULL"))
}

/// # Safety
/// `text` is NULL or a NUL-terminated string.
unsafe fn utf8<'a>(text: *const c_char, what: &str) -> Result<&'a str, (InferStatus, String)> {
    if text.is_null() {
        return Err(null(what));
    }
    CStr::from_ptr(text)
        .to_str()
        .map_err(|_| (InferStatus::Null, format!("{what} is not UTF-8")))
}

fn write_matrix(m: Matrix, out: &mut InferMatrix) {
    let data: Box<[f32]> = m.data.into_boxed_slice();
    out.rows = m.rows;
    out.cols = m.cols;
    out.data = Box::into_raw(data).cast::<f32>();
}

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

/// # Safety
/// `model` is NULL or came from `infer_model_load` and is freed once.
#[no_mangle]
pub unsafe extern "C" fn infer_model_free(model: *mut InferModel) {
    if !model.is_null() {
        drop(Box::from_raw(model));
    }
}

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
        let count = rows
            .checked_mul(cols)
            .ok_or((InferStatus::TooLarge, "rows * cols overflows".into()))?;
        let data = std::slice::from_raw_parts(z, count);
        write_matrix(core(model.0.decode(Rows { data, width: cols }))?, out);
        Ok(())
    })
}

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
        let text = CString::new(text)
            .map_err(|_| (InferStatus::Argument, "generated text holds a NUL".into()))?;
        *out = text.into_raw();
        Ok(())
    })
}

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

/// # Safety
/// `s` is NULL or a string returned by this library and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn infer_string_free(s: *mut c_char) {
    if !s.is_null() {
        drop(CString::from_raw(s));
    }
}

/// The message of this thread's last failure; valid until its next call here.
#[no_mangle]
pub extern "C" fn infer_last_error() -> *const c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ptr())
}

/// # Safety
/// `path` is a NUL-terminated string; `out` points to an `InferMatrix`.
#[no_mangle]
pub unsafe extern "C" fn vae_generate(
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

/// # Safety
/// As `infer_matrix_free`.
#[no_mangle]
pub unsafe extern "C" fn vae_free(m: *mut InferMatrix) {
    infer_matrix_free(m)
}

#[cfg(test)]
mod tests {
    use super::InferStatus;

    /// Each status's name in `include/infer_rs.h`. The match is exhaustive: a new
    /// variant does not compile until it has a name here (and a line in `ALL`).
    fn header_name(status: InferStatus) -> &'static str {
        match status {
            InferStatus::Ok => "INFER_OK",
            InferStatus::Io => "INFER_ERR_IO",
            InferStatus::Corrupt => "INFER_ERR_CORRUPT",
            InferStatus::Metadata => "INFER_ERR_METADATA",
            InferStatus::Tensor => "INFER_ERR_TENSOR",
            InferStatus::Argument => "INFER_ERR_ARGUMENT",
            InferStatus::TooLarge => "INFER_ERR_TOO_LARGE",
            InferStatus::Compute => "INFER_ERR_COMPUTE",
            InferStatus::Null => "INFER_ERR_NULL",
            InferStatus::Panic => "INFER_ERR_PANIC",
        }
    }

    const ALL: [InferStatus; 10] = [
        InferStatus::Ok,
        InferStatus::Io,
        InferStatus::Corrupt,
        InferStatus::Metadata,
        InferStatus::Tensor,
        InferStatus::Argument,
        InferStatus::TooLarge,
        InferStatus::Compute,
        InferStatus::Null,
        InferStatus::Panic,
    ];

    /// The hand-written header's `InferStatus` enum has exactly the Rust enum's names and
    /// values, in order.
    #[test]
    fn the_header_status_enum_is_the_rust_enum() {
        let header = include_str!("../include/infer_rs.h");
        let in_header: Vec<(String, i32)> = header
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.trim().split_once(" = ")?;
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                Some((name.to_string(), digits.parse().ok()?))
            })
            .filter(|(name, _)| name.starts_with("INFER_"))
            .collect();
        let in_rust: Vec<(String, i32)> = ALL
            .iter()
            .map(|&status| (header_name(status).to_string(), status as i32))
            .collect();
        assert_eq!(in_header, in_rust);
        // the values run 0..N with no gap, so ALL cannot have left one out
        assert!(ALL.iter().enumerate().all(|(i, &s)| s as usize == i));
        assert_eq!(ALL.len(), InferStatus::Panic as usize + 1);
    }
}
