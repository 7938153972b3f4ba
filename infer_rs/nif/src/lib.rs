//! The NIF behind `ServeEx.Native`: models live in resources, loaded once and shared;
//! tensors come back in the encoding each request asked for (base64 for the JSON
//! reply, or the raw little-endian f32 bytes of a binary reply);
//! file reads run on dirty IO schedulers, inference on dirty CPU schedulers. Every
//! failure comes back as `{:error, {kind, message}}`, with `kind` one of the wire
//! error codes (mapped in one place, [`reason`]); rustler turns a panic into an Erlang
//! exception, so none takes the VM down.

use base64::Engine as _;
use infer_core::merge_errors;
use infer_core::{Arch, InferError, Matrix, Model, Rows, Sampling, StopReason};
use rustler::{Atom, Binary, Env, LocalPid, NifMap, NifUnitEnum, OwnedBinary, ResourceArc, Term};
use std::panic::AssertUnwindSafe;

mod atoms {
    rustler::atoms! {
        invalid_argument,
        too_large,
        unknown_op,
        bad_model,
        internal,
        deadline_exceeded,
        stream_chunk,
        vae,
        wgan,
        gpt,
    }
}

/// A loaded model. It is immutable after loading, so a panic part-way through a call
/// cannot leave it half-updated: asserting unwind safety is sound.
pub struct ModelResource {
    model: AssertUnwindSafe<Model>,
}

#[rustler::resource_impl]
impl rustler::Resource for ModelResource {}

type Reason = (Atom, String);

/// How a request wants its tensors: `:base64` (the JSON reply's) or `:f32` (raw bytes).
#[derive(NifUnitEnum, Clone, Copy)]
enum Encoding {
    Base64,
    F32,
}

/// The one mapping from core errors to the wire's error codes.
fn reason(err: InferError) -> Reason {
    let kind = match &err {
        InferError::InvalidArgument(_) => atoms::invalid_argument(),
        InferError::TooLarge { .. } => atoms::too_large(),
        InferError::WrongArchitecture { .. } => atoms::unknown_op(),
        InferError::Stopped {
            reason: StopReason::Deadline,
            ..
        } => atoms::deadline_exceeded(),
        InferError::Compute(_)
        | InferError::UnsupportedIsa { .. }
        | InferError::Stopped {
            reason: StopReason::CallerGone,
            ..
        } => atoms::internal(),
        _ => atoms::bad_model(),
    };
    (kind, err.to_string())
}

/// (rows, cols, the little-endian f32 bytes, raw or base64): the reply's encoding, done
/// here because base64 in Rust is many times faster than in the VM.
fn matrix<'a>(
    env: Env<'a>,
    m: Matrix,
    encoding: Encoding,
) -> Result<(usize, usize, Binary<'a>), Reason> {
    let bytes: Vec<u8> = m.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    if let Encoding::F32 = encoding {
        let mut binary = OwnedBinary::new(bytes.len()).ok_or(out_of_memory())?;
        binary.as_mut_slice().copy_from_slice(&bytes);
        return Ok((m.rows, m.cols, binary.release(env)));
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let len = base64::encoded_len(bytes.len(), true).ok_or(out_of_memory())?;
    let mut binary = OwnedBinary::new(len).ok_or(out_of_memory())?;
    // encoded straight into the binary the reply is built from: no intermediate String
    engine
        .encode_slice(&bytes, binary.as_mut_slice())
        .map_err(|e| (atoms::internal(), e.to_string()))?;
    Ok((m.rows, m.cols, binary.release(env)))
}

fn out_of_memory() -> Reason {
    (atoms::internal(), "out of memory".to_string())
}

/// `{:ok, {model, arch, config_json}}` for an exported `.safetensors`.
#[rustler::nif(schedule = "DirtyIo")]
fn model_load(path: String) -> Result<(ResourceArc<ModelResource>, Atom, String), Reason> {
    let model = Model::load(&path).map_err(reason)?;
    let arch = match model.arch() {
        Arch::Vae => atoms::vae(),
        Arch::Wgan => atoms::wgan(),
        Arch::Gpt => atoms::gpt(),
    };
    let config = model.config_json();
    Ok((
        ResourceArc::new(ModelResource {
            model: AssertUnwindSafe(model),
        }),
        arch,
        config,
    ))
}

/// One result per `{n, seed, encoding}`, all decoded in one pass.
#[rustler::nif(schedule = "DirtyCpu")]
fn model_generate_batch<'a>(
    env: Env<'a>,
    resource: ResourceArc<ModelResource>,
    requests: Vec<(usize, u64, Encoding)>,
) -> Vec<Result<(usize, usize, Binary<'a>), Reason>> {
    let sizes: Vec<(usize, u64)> = requests.iter().map(|&(n, seed, _)| (n, seed)).collect();
    resource
        .model
        .generate_batch(&sizes)
        .into_iter()
        .zip(&requests)
        .map(|(r, &(_, _, encoding))| r.map_err(reason).and_then(|m| matrix(env, m, encoding)))
        .collect()
}

/// Little-endian f32 bytes as floats, refusing a length that is not a multiple of 4.
fn floats(bytes: &[u8]) -> Result<Vec<f32>, InferError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(InferError::InvalidArgument(format!(
            "{} bytes are not whole f32 values",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// One result per `{f32_bytes, width, encoding}`, all decoded in one pass.
#[rustler::nif(schedule = "DirtyCpu")]
fn model_decode_batch<'a>(
    env: Env<'a>,
    resource: ResourceArc<ModelResource>,
    inputs: Vec<(Binary<'a>, usize, Encoding)>,
) -> Vec<Result<(usize, usize, Binary<'a>), Reason>> {
    let decoded = inputs
        .iter()
        .map(|(bytes, width, _)| floats(bytes.as_slice()).map(|data| (data, *width)))
        .collect();
    merge_errors(decoded, |rows| resource.model.decode_batch(rows))
        .into_iter()
        .zip(&inputs)
        .map(|(r, &(_, _, encoding))| r.map_err(reason).and_then(|m| matrix(env, m, encoding)))
        .collect()
}

/// One `{mu, logvar}` result per `{f32_bytes, width, encoding}`.
#[rustler::nif(schedule = "DirtyCpu")]
#[allow(clippy::type_complexity)]
fn model_encode_batch<'a>(
    env: Env<'a>,
    resource: ResourceArc<ModelResource>,
    inputs: Vec<(Binary<'a>, usize, Encoding)>,
) -> Vec<Result<((usize, usize, Binary<'a>), (usize, usize, Binary<'a>)), Reason>> {
    inputs
        .iter()
        .map(|&(ref bytes, width, encoding)| {
            let data = floats(bytes.as_slice()).map_err(reason)?;
            let (mu, logvar) = resource
                .model
                .encode(Rows { data: &data, width })
                .map_err(reason)?;
            Ok((matrix(env, mu, encoding)?, matrix(env, logvar, encoding)?))
        })
        .collect()
}

/// Whether to stop a generation before its next token: the calling process was killed
/// (a restarted pipeline orphans its calls: nobody would read the result, and the
/// dirty scheduler is needed), or the request's deadline (Unix ms, 0 = none) passed.
fn stop_reason(env: Env, deadline_ms: u64) -> Option<StopReason> {
    // SAFETY: env is the live environment of this NIF call.
    if unsafe { rustler::sys::enif_is_current_process_alive(env.as_c_arg()) } == 0 {
        return Some(StopReason::CallerGone);
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    (deadline_ms > 0 && now_ms >= u128::from(deadline_ms)).then_some(StopReason::Deadline)
}

/// A text generation request, an Elixir map with these keys.
#[derive(NifMap)]
struct TextRequest<'a> {
    prompt: String,
    max_new_tokens: usize,
    temperature: f64,
    /// `nil`: sample from the whole vocabulary.
    top_k: Option<usize>,
    seed: u64,
    /// Unix ms after which the generation stops; `nil`: none.
    deadline_ms: Option<u64>,
    /// `{pid, tag}`: the new text goes to pid as `{:stream_chunk, tag, text}` messages
    /// while it is generated, every `STREAM_TOKENS` tokens and the rest at the end;
    /// `nil`: no streaming.
    stream: Option<(LocalPid, Term<'a>)>,
}

/// New tokens per streamed chunk.
const STREAM_TOKENS: usize = 8;

/// One text per request; each generation checks its deadline and its caller's
/// liveness between tokens, and a streamed one sends its chunks as it goes.
#[rustler::nif(schedule = "DirtyCpu")]
fn model_generate_text_batch<'a>(
    env: Env<'a>,
    resource: ResourceArc<ModelResource>,
    requests: Vec<TextRequest<'a>>,
) -> Vec<Result<String, Reason>> {
    requests
        .iter()
        .map(|r| {
            let sampling = Sampling {
                temperature: r.temperature as f32,
                top_k: r.top_k,
                seed: r.seed,
            };
            let sent = std::cell::Cell::new(0usize); // new tokens streamed so far
            let send = |text: String| {
                if let Some((pid, tag)) = &r.stream {
                    // a gone receiver is the liveness check's business, not this one's
                    let _ = env.send(pid, (atoms::stream_chunk(), *tag, text));
                }
            };
            let watch = |new: &[u32]| {
                if r.stream.is_some() && new.len() >= sent.get() + STREAM_TOKENS {
                    send(
                        resource
                            .model
                            .decode_tokens(&new[sent.get()..])
                            .unwrap_or_default(),
                    );
                    sent.set(new.len());
                }
                stop_reason(env, r.deadline_ms.unwrap_or(0))
            };
            let text = resource
                .model
                .generate_text_watched(&r.prompt, r.max_new_tokens, sampling, &watch)
                .map_err(reason)?;
            // the tokens after the last chunk: one character each past the prompt's
            let streamed = r.prompt.chars().count() + sent.get();
            if r.stream.is_some() {
                send(text.chars().skip(streamed).collect());
            }
            Ok(text)
        })
        .collect()
}

rustler::init!("Elixir.ServeEx.Native");
