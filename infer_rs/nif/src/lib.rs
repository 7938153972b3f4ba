//! The NIF behind `ServeEx.Native`: models live in resources, loaded once and shared;
//! tensors come back in the encoding each request asked for (base64 for the JSON
//! reply, or the raw little-endian f32 bytes of a binary reply);
//! file reads run on dirty IO schedulers; inference runs on dirty CPU schedulers, or
//! inline for a small image batch (each image NIF comes in both forms). Every
//! failure comes back as `{:error, {kind, message}}`, with `kind` one of the wire
//! error codes (mapped in one place, [`reason`]); rustler turns a panic into an Erlang
//! exception, so none takes the VM down.

use base64::Engine as _;
use infer_core::merge_errors;
use infer_core::{
    Arch, DecodingBatch, InferError, Limits, Matrix, Model, Rows, Sampling, SeqId, StopReason,
};
use rustler::{Atom, Binary, Env, LocalPid, NifMap, NifUnitEnum, OwnedBinary, ResourceArc, Term};
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

/// The engine's buffers come from mimalloc, which keeps freed pages for the next call
/// instead of handing them back to the OS to fault in again (as the Python module does).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// An output tensor: rows, cols, and the values in the encoding the request asked for.
type Tensor<'a> = (usize, usize, Binary<'a>);

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
/// here because base64 in Rust is many times faster than in the VM. Either way the
/// values are written once into the binary the reply is built from.
fn matrix<'a>(env: Env<'a>, m: Matrix, encoding: Encoding) -> Result<Tensor<'a>, Reason> {
    let raw_len = 4 * m.data.len();
    let binary = match encoding {
        Encoding::F32 => {
            let mut binary = OwnedBinary::new(raw_len).ok_or(out_of_memory())?;
            for (out, v) in binary.as_mut_slice().chunks_exact_mut(4).zip(&m.data) {
                out.copy_from_slice(&v.to_le_bytes());
            }
            binary
        }
        Encoding::Base64 => {
            let bytes: Vec<u8> = m.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            let len = base64::encoded_len(raw_len, true).ok_or(out_of_memory())?;
            let mut binary = OwnedBinary::new(len).ok_or(out_of_memory())?;
            base64::engine::general_purpose::STANDARD
                .encode_slice(&bytes, binary.as_mut_slice())
                .map_err(|e| (atoms::internal(), e.to_string()))?;
            binary
        }
    };
    Ok((m.rows, m.cols, binary.release(env)))
}

fn out_of_memory() -> Reason {
    (atoms::internal(), "out of memory".to_string())
}

/// `:ok` once the engine runs `n` threads per call (`infer_core::set_threads`): before
/// its first call, or when it already runs that many.
#[rustler::nif]
fn set_threads(n: usize) -> Result<(), Reason> {
    infer_core::set_threads(n).map_err(reason)
}

/// What the engine runs on: `{cpu model name, instruction-set path, threads per call}`.
#[rustler::nif]
fn engine_info() -> Result<(String, String, usize), Reason> {
    let info = infer_core::cpu_info().map_err(reason)?;
    Ok((info.model_name, info.isa.to_string(), info.threads))
}

/// `{:ok, {model, arch, config_json, macs_per_row}}` for an exported `.safetensors`;
/// `macs_per_row` is nil for the GPT (`Model::macs_per_row`).
#[rustler::nif(schedule = "DirtyIo")]
fn model_load(
    path: String,
) -> Result<(ResourceArc<ModelResource>, Atom, String, Option<usize>), Reason> {
    let model = Model::load(&path).map_err(reason)?;
    let arch = match model.arch() {
        Arch::Vae => atoms::vae(),
        Arch::Wgan => atoms::wgan(),
        Arch::Gpt => atoms::gpt(),
    };
    let (config, macs) = (model.config_json(), model.macs_per_row());
    Ok((
        ResourceArc::new(ModelResource {
            model: AssertUnwindSafe(model),
        }),
        arch,
        config,
        macs,
    ))
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

/// Each request's result in its own encoding.
fn encoded<'a>(
    env: Env<'a>,
    results: Vec<infer_core::Result<Matrix>>,
    encodings: impl Iterator<Item = Encoding>,
) -> Vec<Result<Tensor<'a>, Reason>> {
    results
        .into_iter()
        .zip(encodings)
        .map(|(r, encoding)| r.map_err(reason).and_then(|m| matrix(env, m, encoding)))
        .collect()
}

/// One result per `{n, seed, encoding}`, all decoded in one pass.
fn generate_batch<'a>(
    env: Env<'a>,
    model: &Model,
    requests: &[(usize, u64, Encoding)],
) -> Vec<Result<Tensor<'a>, Reason>> {
    let sizes: Vec<(usize, u64)> = requests.iter().map(|&(n, seed, _)| (n, seed)).collect();
    encoded(
        env,
        model.generate_batch(&sizes),
        requests.iter().map(|r| r.2),
    )
}

/// One result per `{f32_bytes, width, encoding}`, all decoded in one pass.
fn decode_batch<'a>(
    env: Env<'a>,
    model: &Model,
    inputs: &[(Binary<'a>, usize, Encoding)],
) -> Vec<Result<Tensor<'a>, Reason>> {
    let decoded = inputs
        .iter()
        .map(|(bytes, width, _)| floats(bytes.as_slice()).map(|data| (data, *width)))
        .collect();
    let results = merge_errors(decoded, |rows| model.decode_batch(rows));
    encoded(env, results, inputs.iter().map(|i| i.2))
}

/// One `{mu, logvar}` result per `{f32_bytes, width, encoding}`.
fn encode_batch<'a>(
    env: Env<'a>,
    model: &Model,
    inputs: &[(Binary<'a>, usize, Encoding)],
) -> Vec<Result<(Tensor<'a>, Tensor<'a>), Reason>> {
    inputs
        .iter()
        .map(|&(ref bytes, width, encoding)| {
            let data = floats(bytes.as_slice()).map_err(reason)?;
            let (mu, logvar) = model.encode(Rows { data: &data, width }).map_err(reason)?;
            Ok((matrix(env, mu, encoding)?, matrix(env, logvar, encoding)?))
        })
        .collect()
}

/// An image operation as two NIFs of one body: `$dirty` runs on a dirty CPU scheduler;
/// `$inline` runs on the calling process's own scheduler, which saves the two
/// migrations to a dirty scheduler and back, for a batch that `ServeEx.Engine` judged
/// small enough to finish well within a scheduler's 1 ms time slice.
macro_rules! image_nifs {
    ($dirty:ident, $inline:ident, $body:ident, $input:ty, $output:ty) => {
        #[rustler::nif(schedule = "DirtyCpu")]
        fn $dirty<'a>(
            env: Env<'a>,
            resource: ResourceArc<ModelResource>,
            inputs: Vec<$input>,
        ) -> Vec<Result<$output, Reason>> {
            $body(env, &resource.model, &inputs)
        }

        #[rustler::nif]
        fn $inline<'a>(
            env: Env<'a>,
            resource: ResourceArc<ModelResource>,
            inputs: Vec<$input>,
        ) -> Vec<Result<$output, Reason>> {
            $body(env, &resource.model, &inputs)
        }
    };
}

image_nifs!(
    model_generate_batch,
    model_generate_batch_inline,
    generate_batch,
    (usize, u64, Encoding),
    Tensor<'a>
);
image_nifs!(
    model_decode_batch,
    model_decode_batch_inline,
    decode_batch,
    (Binary<'a>, usize, Encoding),
    Tensor<'a>
);
image_nifs!(
    model_encode_batch,
    model_encode_batch_inline,
    encode_batch,
    (Binary<'a>, usize, Encoding),
    (Tensor<'a>, Tensor<'a>)
);

/// Whether to stop a generation before its next token: the calling process was killed
/// (a restarted pipeline orphans its calls: nobody would read the result, and the
/// dirty scheduler is needed), the process that waits for the result is gone (an HTTP
/// client hung up), or the request's deadline (Unix ms, 0 = none) passed.
fn stop_reason(env: Env, waiter: Option<LocalPid>, deadline_ms: u64) -> Option<StopReason> {
    // SAFETY: env is the live environment of this NIF call.
    if unsafe { rustler::sys::enif_is_current_process_alive(env.as_c_arg()) } == 0 {
        return Some(StopReason::CallerGone);
    }
    if waiter.is_some_and(|pid| !env.is_process_alive(pid)) {
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
    /// The process that waits for the result, if not the caller (an HTTP handler): the
    /// generation stops between tokens once it is gone; `nil`: the caller alone.
    waiter: Option<LocalPid>,
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
            let sent_bytes = std::cell::Cell::new(0usize); // and their text's bytes
            let send = |text: String| {
                if let Some((pid, tag)) = &r.stream {
                    // a gone receiver is the liveness check's business, not this one's
                    let _ = env.send(pid, (atoms::stream_chunk(), *tag, text));
                }
            };
            let watch = |new: &[u32]| {
                if r.stream.is_some() && new.len() >= sent.get() + STREAM_TOKENS {
                    let chunk = resource
                        .model
                        .decode_tokens(&new[sent.get()..])
                        .unwrap_or_default();
                    sent_bytes.set(sent_bytes.get() + chunk.len());
                    send(chunk);
                    sent.set(new.len());
                }
                stop_reason(env, r.waiter, r.deadline_ms.unwrap_or(0))
            };
            let text = resource
                .model
                .generate_text_watched(&r.prompt, r.max_new_tokens, sampling, &watch)
                .map_err(reason)?;
            // the text after the last chunk: the full text is the prompt, then every
            // chunk sent, then this tail
            if r.stream.is_some() {
                let tail = text.get(r.prompt.len() + sent_bytes.get()..);
                send(tail.unwrap_or_default().to_string());
            }
            Ok(text)
        })
        .collect()
}

/// A decoding batch of one GPT (`infer_core::decoding`), made to be held by one
/// long-lived process that joins, steps and leaves its sequences. The lock only guards
/// against misuse from several processes; after a panic inside a step the batch is
/// still usable as the lock left it, and its holder should start a new one.
pub struct BatchResource {
    model: ResourceArc<ModelResource>,
    batch: Mutex<DecodingBatch>,
}

#[rustler::resource_impl]
impl rustler::Resource for BatchResource {}

impl BatchResource {
    fn lock(&self) -> std::sync::MutexGuard<'_, DecodingBatch> {
        self.batch.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The knobs of a decoding batch, an Elixir map with these keys; `nil` takes the
/// engine's default (`infer_core::Limits::default`).
#[derive(NifMap)]
struct BatchLimits {
    max_sequences: Option<usize>,
    max_cached_tokens: Option<usize>,
    prefill_chunk: Option<usize>,
}

/// `{:ok, batch}`: an empty decoding batch of a GPT.
#[rustler::nif]
fn batch_new(
    model: ResourceArc<ModelResource>,
    limits: BatchLimits,
) -> Result<ResourceArc<BatchResource>, Reason> {
    let default = Limits::default();
    let limits = Limits {
        max_sequences: limits.max_sequences.unwrap_or(default.max_sequences),
        max_cached_tokens: limits
            .max_cached_tokens
            .unwrap_or(default.max_cached_tokens),
        prefill_chunk: limits.prefill_chunk.unwrap_or(default.prefill_chunk),
    };
    let batch = model.model.gpt().and_then(|gpt| gpt.decoding_batch(limits));
    Ok(ResourceArc::new(BatchResource {
        batch: Mutex::new(batch.map_err(reason)?),
        model,
    }))
}

/// `{:ok, id}`: the sequence joined (its cache may be allocated: a dirty CPU
/// scheduler); refused alone, as `model_generate_text_batch` refuses, or when full.
#[rustler::nif(schedule = "DirtyCpu")]
fn batch_join(
    resource: ResourceArc<BatchResource>,
    prompt: String,
    max_new_tokens: usize,
    temperature: f64,
    top_k: Option<usize>,
    seed: u64,
) -> Result<SeqId, Reason> {
    let gpt = resource.model.model.gpt().map_err(reason)?;
    let sampling = Sampling {
        temperature: temperature as f32,
        top_k,
        seed,
    };
    let ids = gpt.prompt_ids(&prompt).map_err(reason)?;
    gpt.join(&mut resource.lock(), &ids, max_new_tokens, sampling)
        .map_err(reason)
}

/// One step: `{:ok, [{id, new_text, finished}]}` for each sequence that gained a token.
#[rustler::nif(schedule = "DirtyCpu")]
fn batch_step(resource: ResourceArc<BatchResource>) -> Result<Vec<(SeqId, String, bool)>, Reason> {
    let gpt = resource.model.model.gpt().map_err(reason)?;
    let emitted = gpt.step(&mut resource.lock()).map_err(reason)?;
    Ok(emitted
        .into_iter()
        .map(|e| (e.id, gpt.decode(&[e.token]), e.finished))
        .collect())
}

/// `{:ok, text_so_far}`: the sequence left at once; an id that is not live is refused.
#[rustler::nif]
fn batch_leave(resource: ResourceArc<BatchResource>, id: SeqId) -> Result<String, Reason> {
    let gpt = resource.model.model.gpt().map_err(reason)?;
    let ids = resource.lock().leave(id).map_err(reason)?;
    Ok(gpt.decode(&ids))
}

/// Live sequences.
#[rustler::nif]
fn batch_len(resource: ResourceArc<BatchResource>) -> usize {
    resource.lock().len()
}

rustler::init!("Elixir.ServeEx.Native");
