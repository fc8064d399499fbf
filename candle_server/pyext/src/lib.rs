//! `rankbench_candle`: the Candle RankNet of `candle_server::model`, called from Python.
//!
//! The binding adds no model code: loading, the forward pass and the score copy-out are
//! `candle_server::model::RankNet`'s, the very functions the Rust server calls. What it adds is the
//! Python boundary: argument checks, one copy of the input rows into the tensor Candle owns (the
//! Rust server builds that buffer itself), the GIL released around the forward pass, and the
//! scores handed to NumPy without a copy.
//!
//! ```python
//! import numpy as np, rankbench_candle
//! model = rankbench_candle.RankNet("artifacts")          # a directory or the .safetensors file
//! scores = model.infer(np.zeros((10, 40), np.float32))    # float32 (10,)
//! ```

use std::path::PathBuf;

use candle_server::model::{self, ModelError, RankNet as Model, INPUT_FEATURES, WEIGHTS_FILE};
use candle_server::runtime::{self, ThreadSetting};
use numpy::{
    dtype, PyArray1, PyArray2, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

/// The RankNet scoring model (`Linear(40,256) -> ReLU -> Linear(256,128) -> ReLU ->
/// Linear(128,1) -> sigmoid`), loaded once from `ranknet.safetensors`.
///
/// `RankNet(path)`: `path` is the weights file or a model directory holding `ranknet.safetensors`.
/// Raises FileNotFoundError when the file is missing, ValueError when it does not hold this model.
#[pyclass(frozen, module = "rankbench_candle")]
struct RankNet {
    model: Model,
    path: PathBuf,
}

#[pymethods]
impl RankNet {
    #[new]
    fn new(path: PathBuf) -> PyResult<Self> {
        let path = if path.is_dir() { path.join(WEIGHTS_FILE) } else { path };
        if !path.is_file() {
            let shown = path.display().to_string();
            // (errno, strerror, filename), as open() raises it: "[Errno 2] ...: '<path>'".
            return Err(PyFileNotFoundError::new_err((
                libc::ENOENT,
                "model weights not found (`make model` creates them)",
                shown,
            )));
        }
        let model = Model::load(&path).map_err(model_error)?;
        Ok(Self { model, path })
    }

    /// Scores of `x`, a C-contiguous float32 array of shape (N, 40): float32 array of shape (N,),
    /// each in (0, 1), in row order. Raises TypeError for a non-array or a dtype other than native
    /// float32, ValueError for another shape or a non-C-contiguous (or misaligned) array. The GIL is
    /// released during the forward pass.
    fn infer<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let rows = checked_rows(py, x)?;
        // Copied under the GIL: with the GIL released, Python code in another thread could write
        // to the NumPy buffer while Candle reads it. Candle's CPU tensors own their storage, so
        // this copy (N * 160 bytes) is the one the tensor needs anyway.
        let rows: Vec<f32> = rows.as_slice().map_err(|_| not_contiguous())?.to_vec();
        let model = &self.model;
        let scores = py.detach(move || model.score_rows(rows)).map_err(model_error)?;
        // The Vec becomes the array's buffer: no copy on the way out.
        Ok(PyArray1::from_vec(py, scores))
    }

    /// Mean thread-CPU nanoseconds of `iterations` calls to the Rust scoring function (forward
    /// pass and score copy-out: what `infer` runs with the GIL released), timed inside Rust.
    /// `infer`'s own thread-CPU time (Python: `time.thread_time_ns`) minus this is what the Python
    /// binding costs; thread CPU time leaves out the time other processes had the core.
    /// A benchmarking aid; `x` is checked as in `infer`.
    fn time_scores(&self, py: Python<'_>, x: &Bound<'_, PyAny>, iterations: u32) -> PyResult<f64> {
        if iterations == 0 {
            return Err(PyValueError::new_err("iterations must be at least 1"));
        }
        let rows = checked_rows(py, x)?;
        let rows: Vec<f32> = rows.as_slice().map_err(|_| not_contiguous())?.to_vec();
        let model = &self.model;
        py.detach(move || {
            let input = model::input_tensor(rows)?;
            let start = thread_cpu_ns();
            for _ in 0..iterations {
                std::hint::black_box(model.scores(std::hint::black_box(&input))?);
            }
            Ok((thread_cpu_ns() - start) as f64 / f64::from(iterations))
        })
        .map_err(model_error)
    }

    /// The weights file this model was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    fn __repr__(&self) -> String {
        format!("rankbench_candle.RankNet({:?})", self.path.display().to_string())
    }
}

/// `x` as a read-only (N, 40) float32 view, or the Python exception that says what is wrong.
fn checked_rows<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
) -> PyResult<numpy::PyReadonlyArray2<'py, f32>> {
    let array = x.cast::<PyUntypedArray>().map_err(|_| {
        let type_name = x.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
        PyTypeError::new_err(format!(
            "x must be a numpy.ndarray of float32, shape (N, {INPUT_FEATURES}); got {type_name}"
        ))
    })?;
    let descr = array.dtype();
    if !descr.is_equiv_to(&dtype::<f32>(py)) {
        let shown = descr.str().map(|s| s.to_string()).unwrap_or_else(|_| "?".into());
        return Err(PyTypeError::new_err(format!(
            "x must have dtype float32 (native byte order); got {shown} \
             (convert with x.astype(numpy.float32))"
        )));
    }
    let shape = array.shape();
    if shape.len() != 2 || shape[1] != INPUT_FEATURES {
        return Err(PyValueError::new_err(format!(
            "x must have shape (N, {INPUT_FEATURES}); got {}",
            shape_text(shape)
        )));
    }
    if !array.is_c_contiguous() || !array.is_aligned() {
        return Err(not_contiguous());
    }
    let typed = array.cast::<PyArray2<f32>>().map_err(|e| PyTypeError::new_err(e.to_string()))?;
    typed.try_readonly().map_err(|e| PyValueError::new_err(format!("x cannot be read: {e}")))
}

/// CPU time the calling thread has run, in ns (CLOCK_THREAD_CPUTIME_ID, as `time.thread_time_ns`).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given; this clock exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn not_contiguous() -> PyErr {
    PyValueError::new_err(
        "x must be a C-contiguous, aligned array (make one with numpy.ascontiguousarray(x))",
    )
}

fn shape_text(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// Load failures are the file's fault (ValueError); input errors cannot pass `checked_rows`, and
/// Candle failures during the forward pass would be bugs (RuntimeError).
fn model_error(err: ModelError) -> PyErr {
    match err {
        ModelError::Load { .. } | ModelError::Input(_) => PyValueError::new_err(err.to_string()),
        ModelError::Candle(_) => PyRuntimeError::new_err(err.to_string()),
    }
}

/// Candle's compute thread count in this process (1 once this module is imported).
#[pyfunction]
fn compute_threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Sets glibc's malloc to keep freed blocks for reuse, as the Rust server does at start (the same
/// function, `candle_server::runtime::keep_freed_memory`, 32 MiB thresholds). With glibc's
/// default dynamic thresholds, the forward pass's larger intermediates (1 MiB at 1,000 rows) go
/// back to the kernel when freed and fault in again on the next call: 1.7 ms instead of 0.9 ms at
/// 1,000 rows. Process-wide, so a server calls it once at start (py_servers' candle backend
/// does); the import alone changes nothing. Returns False where the allocator is not glibc's.
#[pyfunction]
fn keep_freed_memory() -> bool {
    runtime::keep_freed_memory()
}

/// What governs the forward pass's threads, as Candle, rayon and gemm report it now on the
/// calling thread (`candle_server::runtime::runtime_threads`, the dict the Rust server reports
/// as `runtime_threads` in /stats): names to int or str.
#[pyfunction]
fn runtime_threads(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    let settings = pyo3::types::PyDict::new(py);
    for (name, value) in runtime::runtime_threads() {
        match value {
            ThreadSetting::Count(n) => settings.set_item(name, n)?,
            ThreadSetting::Text(text) => settings.set_item(name, text)?,
        }
    }
    Ok(settings)
}

/// How this extension was compiled: `profile` ("release" or "debug"), `opt_level`,
/// `debug_assertions`. The release profile of Cargo.toml also sets fat LTO and 1 codegen unit.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    let info = pyo3::types::PyDict::new(py);
    info.set_item("profile", env!("RANKBENCH_CANDLE_PROFILE"))?;
    info.set_item("opt_level", env!("RANKBENCH_CANDLE_OPT_LEVEL"))?;
    info.set_item("debug_assertions", cfg!(debug_assertions))?;
    info.set_item("version", env!("CARGO_PKG_VERSION"))?;
    Ok(info)
}

#[pymodule]
fn rankbench_candle(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // One compute thread, as every runtime in rankbench: Candle's matmul then runs gemm without
    // parallelism and its elementwise pool starts no worker. Set at import, before any forward
    // pass and before a server forks its workers (they inherit the environment).
    let threads = runtime::use_single_compute_thread();
    if threads != 1 {
        return Err(PyRuntimeError::new_err(format!(
            "Candle reports {threads} compute threads after requesting 1"
        )));
    }
    m.add_class::<RankNet>()?;
    m.add_function(wrap_pyfunction!(compute_threads, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(keep_freed_memory, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_threads, m)?)?;
    m.add("INPUT_FEATURES", INPUT_FEATURES)?;
    m.add("WEIGHTS_FILE", WEIGHTS_FILE)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
