//! The Python module `infer_rs`: a thin layer over `infer_core` that converts numpy
//! arrays, releases the GIL while Rust computes, and maps every `InferError` to the one
//! Python exception `infer_rs.InferError`.

use infer_core::{DecodingBatch, Limits, Matrix, Model, Rows, Sampling};
use numpy::ndarray::Array2;
use numpy::{AllowTypeChange, IntoPyArray, PyArray2, PyArrayLikeDyn};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::hash_map::RandomState;

/// The engine's buffers (activations, outputs handed to numpy) come from mimalloc, which
/// keeps freed pages for the next call: with the system allocator, a GPT re-prefill's
/// buffers of a few hundred KB went back to the OS and faulted in again every token.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;

create_exception!(
    infer_rs,
    InferError,
    PyException,
    "A model file or an argument was refused; the message says what was wrong."
);

/// The one place core errors become Python exceptions.
fn py_err(err: infer_core::InferError) -> PyErr {
    InferError::new_err(err.to_string())
}

fn to_numpy(py: Python<'_>, m: Matrix) -> PyResult<Bound<'_, PyArray2<f32>>> {
    let array = Array2::from_shape_vec((m.rows, m.cols), m.data)
        .map_err(|e| InferError::new_err(format!("output shape: {e}")))?;
    Ok(array.into_pyarray(py))
}

/// A 2-D array-like (rows, width) as row-major f32 and its width (any float dtype or
/// layout is accepted); any other number of dimensions is refused, naming `name`.
fn rows(
    name: &str,
    array: &PyArrayLikeDyn<'_, f32, AllowTypeChange>,
) -> PyResult<(Vec<f32>, usize)> {
    let view = array.as_array();
    match view.shape() {
        &[_, width] => Ok((view.iter().copied().collect(), width)),
        shape => Err(InferError::new_err(format!(
            "invalid argument: {name} must be a 2-D array (rows, width), got shape {shape:?}"
        ))),
    }
}

/// A count argument as the engine takes it; a negative one is refused, naming `name`
/// (the engine itself refuses 0 and values above their limits).
fn count(name: &str, value: i64) -> PyResult<usize> {
    usize::try_from(value).map_err(|_| {
        InferError::new_err(format!(
            "invalid argument: {name} must be at least 1, got {value}"
        ))
    })
}

/// Rows in, rows out, with the GIL released while `op` runs.
fn rows_to_rows<'py>(
    py: Python<'py>,
    name: &str,
    input: &PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    op: impl FnOnce(Rows) -> infer_core::Result<Matrix> + Send,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (data, width) = rows(name, input)?;
    let out = py
        .allow_threads(|| op(Rows { data: &data, width }))
        .map_err(py_err)?;
    to_numpy(py, out)
}

/// A seed argument: an integer from 0 to 2^64 - 1; anything else is refused with
/// InferError, naming the value (not Python's OverflowError or TypeError).
struct Seed(u64);

impl<'py> FromPyObject<'py> for Seed {
    fn extract_bound(value: &Bound<'py, PyAny>) -> PyResult<Self> {
        value.extract::<u64>().map(Seed).map_err(|_| {
            let got = value.repr().map_or_else(|_| "?".into(), |r| r.to_string());
            InferError::new_err(format!(
                "invalid argument: a seed must be an integer from 0 to 2^64 - 1, got {got}"
            ))
        })
    }
}

/// The given seed, or a fresh one from the process's random state.
fn seed_or_random(seed: Option<Seed>) -> u64 {
    seed.map_or_else(|| RandomState::new().build_hasher().finish(), |s| s.0)
}

/// A `top_k` argument; a negative one is refused, naming it (the engine refuses 0 and
/// values above the vocabulary).
fn top_k_arg(top_k: Option<i64>) -> PyResult<Option<usize>> {
    top_k.map(|k| count("top_k", k)).transpose()
}

/// A model loaded once from an exported `.safetensors`, for repeated calls.
#[pyclass(name = "Model", module = "infer_rs", frozen)]
struct PyModel {
    inner: Model,
    path: PathBuf,
}

#[pymethods]
impl PyModel {
    /// Load and check the file at `path` (an export of `python -m train`); raises
    /// InferError, saying what is wrong, for a missing, corrupt or mismatched file.
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py.allow_threads(|| Model::load(&path)).map_err(py_err)?;
        Ok(Self { inner, path })
    }

    /// "vae", "wgan" or "gpt".
    #[getter]
    fn arch(&self) -> &'static str {
        self.inner.arch().name()
    }

    /// The config stored in the file, as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("json")?
            .call_method1("loads", (self.inner.config_json(),))
    }

    /// n samples from the prior, shape (n, x_dim), float32: images in [0, 1] (VAE) or
    /// [-1, 1] (WGAN). The same seed gives the same samples; None draws a fresh one.
    #[pyo3(signature = (n, seed=None))]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        n: i64,
        seed: Option<Seed>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (n, seed) = (count("n", n)?, seed_or_random(seed));
        let out = py
            .allow_threads(|| self.inner.generate(n, seed))
            .map_err(py_err)?;
        to_numpy(py, out)
    }

    /// Decode latents z, shape (rows, z_dim), to samples (rows, x_dim), float32.
    fn decode<'py>(
        &self,
        py: Python<'py>,
        z: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        rows_to_rows(py, "z", &z, |input| self.inner.decode(input))
    }

    /// The VAE's posterior of images x (rows, x_dim): (mu, logvar), each (rows, z_dim).
    #[allow(clippy::type_complexity)]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        x: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    ) -> PyResult<(Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<f32>>)> {
        let (data, width) = rows("x", &x)?;
        let (mu, logvar) = py
            .allow_threads(|| self.inner.encode(Rows { data: &data, width }))
            .map_err(py_err)?;
        Ok((to_numpy(py, mu)?, to_numpy(py, logvar)?))
    }

    /// The VAE's reconstruction of images x (rows, x_dim): decode(mu).
    fn reconstruct<'py>(
        &self,
        py: Python<'py>,
        x: PyArrayLikeDyn<'py, f32, AllowTypeChange>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        rows_to_rows(py, "x", &x, |input| self.inner.reconstruct(input))
    }

    /// The GPT's next-token logits at every position of `prompt`, (len, vocab_size).
    fn logits<'py>(&self, py: Python<'py>, prompt: &str) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let out = py
            .allow_threads(|| self.inner.logits(prompt))
            .map_err(py_err)?;
        to_numpy(py, out)
    }

    /// `prompt` followed by up to `max_new_tokens` generated characters. Temperature 0
    /// is greedy; otherwise sampling at that temperature (at least 0.01), over the
    /// `top_k` most likely tokens if given. The same seed gives the same text.
    #[pyo3(signature = (prompt, max_new_tokens, temperature=0.0, top_k=None, seed=None))]
    fn generate_text(
        &self,
        py: Python<'_>,
        prompt: &str,
        max_new_tokens: i64,
        temperature: f32,
        top_k: Option<i64>,
        seed: Option<Seed>,
    ) -> PyResult<String> {
        let max_new_tokens = count("max_new_tokens", max_new_tokens)?;
        let sampling = Sampling {
            temperature,
            top_k: top_k_arg(top_k)?,
            seed: seed_or_random(seed),
        };
        py.allow_threads(|| self.inner.generate_text(prompt, max_new_tokens, sampling))
            .map_err(py_err)
    }

    /// Many texts at once: each prompt followed by up to its `max_new_tokens` (one int
    /// for all, or a list with one per prompt) generated characters, all generated
    /// together in one decoding batch (sequences join as places free up). Each text is
    /// the one `generate_text` gives for the same prompt, sampling and seed, whatever
    /// the others: `seeds` (one per prompt) default to fresh random ones.
    #[pyo3(signature = (prompts, max_new_tokens, temperature=0.0, top_k=None, seeds=None))]
    fn generate_texts(
        &self,
        py: Python<'_>,
        prompts: Vec<String>,
        max_new_tokens: PerPrompt,
        temperature: f32,
        top_k: Option<i64>,
        seeds: Option<Vec<Seed>>,
    ) -> PyResult<Vec<String>> {
        let n = prompts.len();
        let lengths = max_new_tokens.for_each(n)?;
        let top_k = top_k_arg(top_k)?;
        let seeds: Vec<u64> = match seeds {
            Some(seeds) if seeds.len() != n => {
                return Err(InferError::new_err(format!(
                    "{} seeds for {n} prompts; give one per prompt",
                    seeds.len()
                )))
            }
            Some(seeds) => seeds.into_iter().map(|s| s.0).collect(),
            None => (0..n).map(|_| seed_or_random(None)).collect(),
        };
        let requests: Vec<(&str, usize, Sampling)> = prompts
            .iter()
            .zip(lengths)
            .zip(seeds)
            .map(|((prompt, max_new), seed)| {
                let sampling = Sampling {
                    temperature,
                    top_k,
                    seed,
                };
                (prompt.as_str(), max_new, sampling)
            })
            .collect();
        py.allow_threads(|| self.inner.generate_texts(&requests, Limits::default()))
            .map_err(py_err)
    }

    /// An empty decoding batch of this GPT, for callers that stream: `join` sequences,
    /// `step` them a token at a time, `leave` to cancel one.
    #[pyo3(signature = (max_sequences=None, max_cached_tokens=None, prefill_chunk=None))]
    fn decoding_batch(
        slf: Bound<'_, Self>,
        max_sequences: Option<usize>,
        max_cached_tokens: Option<usize>,
        prefill_chunk: Option<usize>,
    ) -> PyResult<PyDecodingBatch> {
        let defaults = Limits::default();
        let limits = Limits {
            max_sequences: max_sequences.unwrap_or(defaults.max_sequences),
            max_cached_tokens: max_cached_tokens.unwrap_or(defaults.max_cached_tokens),
            prefill_chunk: prefill_chunk.unwrap_or(defaults.prefill_chunk),
        };
        let batch = slf
            .get()
            .inner
            .gpt()
            .and_then(|gpt| gpt.decoding_batch(limits))
            .map_err(py_err)?;
        Ok(PyDecodingBatch {
            model: slf.unbind(),
            batch,
        })
    }

    /// infer_rs.Model('path', arch='...').
    fn __repr__(&self) -> String {
        format!(
            "infer_rs.Model('{}', arch='{}')",
            self.path.display(),
            self.inner.arch().name()
        )
    }
}

/// `max_new_tokens` of `generate_texts`: one value for every prompt, or one each.
#[derive(FromPyObject)]
enum PerPrompt {
    All(i64),
    Each(Vec<i64>),
}

impl PerPrompt {
    fn for_each(self, prompts: usize) -> PyResult<Vec<usize>> {
        match self {
            Self::All(n) => Ok(vec![count("max_new_tokens", n)?; prompts]),
            Self::Each(list) if list.len() == prompts => list
                .into_iter()
                .map(|n| count("max_new_tokens", n))
                .collect(),
            Self::Each(list) => Err(InferError::new_err(format!(
                "{} max_new_tokens values for {prompts} prompts; give one, or one per prompt",
                list.len()
            ))),
        }
    }
}

/// Sequences of one GPT decoded together, a token per step for each: made by
/// `Model.decoding_batch`. Each sequence's text is the one `generate_text` gives for its
/// prompt, sampling and seed, whatever joins or leaves beside it.
#[pyclass(name = "DecodingBatch", module = "infer_rs")]
struct PyDecodingBatch {
    model: Py<PyModel>,
    batch: DecodingBatch,
}

#[pymethods]
impl PyDecodingBatch {
    /// Add a sequence continuing `prompt` by `max_new_tokens` characters; returns its
    /// id. Refused (InferError) as `generate_text` refuses, or when the batch is full.
    #[pyo3(signature = (prompt, max_new_tokens, temperature=0.0, top_k=None, seed=None))]
    fn join(
        &mut self,
        prompt: &str,
        max_new_tokens: i64,
        temperature: f32,
        top_k: Option<i64>,
        seed: Option<Seed>,
    ) -> PyResult<u64> {
        let gpt = self.model.get().inner.gpt().map_err(py_err)?;
        let sampling = Sampling {
            temperature,
            top_k: top_k_arg(top_k)?,
            seed: seed_or_random(seed),
        };
        let ids = gpt.prompt_ids(prompt).map_err(py_err)?;
        let max_new_tokens = count("max_new_tokens", max_new_tokens)?;
        gpt.join(&mut self.batch, &ids, max_new_tokens, sampling)
            .map_err(py_err)
    }

    /// One token for every live sequence whose prompt is prefilled, as (id, character,
    /// finished) tuples; a finished sequence has left the batch. The GIL is released.
    fn step(&mut self, py: Python<'_>) -> PyResult<Vec<(u64, String, bool)>> {
        let gpt = self.model.get().inner.gpt().map_err(py_err)?;
        let batch = &mut self.batch;
        let emitted = py.allow_threads(|| gpt.step(batch)).map_err(py_err)?;
        Ok(emitted
            .into_iter()
            .map(|e| (e.id, gpt.decode(&[e.token]), e.finished))
            .collect())
    }

    /// Cancel sequence `id` at once; returns its text so far (prompt included).
    fn leave(&mut self, id: u64) -> PyResult<String> {
        let gpt = self.model.get().inner.gpt().map_err(py_err)?;
        let ids = self.batch.leave(id).map_err(py_err)?;
        Ok(gpt.decode(&ids))
    }

    /// Live sequences.
    fn __len__(&self) -> usize {
        self.batch.len()
    }
}

/// Load the VAE at `path` and return n samples, shape (n, x_dim), float32.
#[pyfunction]
#[pyo3(signature = (path, n, seed=None))]
fn vae_generate(
    py: Python<'_>,
    path: PathBuf,
    n: i64,
    seed: Option<Seed>,
) -> PyResult<Bound<'_, PyArray2<f32>>> {
    let (n, seed) = (count("n", n)?, seed_or_random(seed));
    let out = py
        .allow_threads(|| Model::vae_generate(&path, n, seed))
        .map_err(py_err)?;
    to_numpy(py, out)
}

/// The machine the engine runs on, as a dict:
///
/// - ``model_name``: the CPU's model name (from /proc/cpuinfo on Linux, else CPUID
///   on x86-64; "unknown" if neither says);
/// - ``vendor``: "AuthenticAMD", "GenuineIntel", ... ("unknown" likewise);
/// - ``isa``: the instruction-set path the kernels run on, "portable", "avx2" or
///   "avx512" (INFER_RS_ISA forces one);
/// - ``supported_isas``: every path this CPU can run;
/// - ``l2_bytes``: one core's L2 cache, as the dense layers' thread split assumes it;
/// - ``threads``: threads per engine call (RAYON_NUM_THREADS, else one per core),
///   fixed when the engine first runs in this process.
///
/// Raises InferError if INFER_RS_ISA names a path this CPU cannot run.
#[pyfunction]
fn cpu_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let info = infer_core::cpu_info().map_err(py_err)?;
    let dict = PyDict::new(py);
    dict.set_item("model_name", info.model_name)?;
    dict.set_item("vendor", info.vendor)?;
    dict.set_item("isa", info.isa.name())?;
    let supported: Vec<&str> = info.supported.iter().map(|isa| isa.name()).collect();
    dict.set_item("supported_isas", supported)?;
    dict.set_item("l2_bytes", info.l2_bytes)?;
    dict.set_item("threads", info.threads)?;
    Ok(dict)
}

#[pymodule]
fn _infer_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_class::<PyDecodingBatch>()?;
    m.add_function(wrap_pyfunction!(vae_generate, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_info, m)?)?;
    m.add("InferError", m.py().get_type::<InferError>())?;
    Ok(())
}
