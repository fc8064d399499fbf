//! RankNet on ONNX Runtime (`--runtime onnx`) through the `ort` crate: `artifacts/ranknet.onnx`
//! (input `x` (N, 40) f32, output `score` (N,)), with py-onnx's session options.
//!
//! The runtime is the shared library that the Python onnxruntime package in `.venv` ships, loaded
//! at run time (`ort`'s `load-dynamic`), so that rust-onnx and py-onnx run the same ONNX Runtime
//! build and differ only in the language around it. [`find_library`] finds it; a missing or
//! incompatible library is one error line at start-up.
//!
//! Session options, as py_servers/backends/onnx_backend.py sets them: one intra-op and one
//! inter-op thread, sequential execution, no spinning, `ORT_ENABLE_ALL`, and the CPU execution
//! provider appended explicitly (Python's `providers=["CPUExecutionProvider"]`), with ONNX
//! Runtime's default CPU arena. The explicit provider matters: `ort`'s session builder also sets
//! an execution-provider selection policy, which ONNX Runtime applies only to a session without
//! providers; with the CPU provider appended, the session is built the way Python builds it.
//!
//! `ort` runs a session through `&mut`, so each worker needs a session of its own: one per
//! worker, all from the same options (py-onnx has one per worker process).

use std::ffi::{c_char, c_int, CStr, CString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ort::environment::Environment;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::TensorRef;
use ort::AsPointer;

use super::scorer::{row_count, Scorer, ScorerError};
use crate::model::INPUT_FEATURES;
use crate::runtime::ThreadSetting;

/// File name of the ONNX export inside the model directory.
pub const MODEL_FILE: &str = "ranknet.onnx";
/// Where the library is taken from when no flag names it (`ort`'s own variable).
pub const LIBRARY_ENV: &str = "ORT_DYLIB_PATH";
const INPUT: &str = "x";
const OUTPUT: &str = "score";
/// The session config entries py-onnx sets to "0" (and reports).
const SPIN_KEYS: [&str; 2] = ["session.intra_op.allow_spinning", "session.inter_op.allow_spinning"];

/// The library of `.venv`'s onnxruntime package
/// (`.venv/lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.<version>`), looked for
/// from the current directory upwards, then from the executable's directory upwards (the binary
/// lives in `candle_server/target/<profile>/`). `None` when no `.venv` on the way has one.
pub fn find_library() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    let starts = cwd
        .iter()
        .chain(exe.as_ref().and_then(|e| e.parent()).map(Path::to_path_buf).iter())
        .cloned()
        .collect::<Vec<_>>();
    starts
        .iter()
        .flat_map(|start| start.ancestors())
        .find_map(|dir| venv_library(&dir.join(".venv")))
}

/// `libonnxruntime.so.*` of the onnxruntime package in the venv at `venv` (the highest version
/// should there be several).
pub fn venv_library(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut found: Vec<PathBuf> = read_names(&lib)
        .filter(|name| name.starts_with("python"))
        .flat_map(|python| {
            let capi = lib.join(python).join("site-packages/onnxruntime/capi");
            read_names(&capi)
                .filter(|name| name.starts_with("libonnxruntime.so"))
                .map(|name| capi.join(name))
                .collect::<Vec<_>>()
        })
        .collect();
    found.sort();
    found.pop()
}

fn read_names(dir: &Path) -> impl Iterator<Item = String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
}

/// The process's ONNX Runtime: `ort` loads one library and builds one environment per process.
struct Runtime {
    library: PathBuf,
    version: String,
    environment: Environment,
    /// The library as this module opened it, for the one symbol `ort` does not wrap.
    handle: libloading::Library,
}

static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);

/// Loads `library` (once per process; the same path again reuses it, another path is an error).
fn runtime(library: &Path) -> Result<Arc<Runtime>, ScorerError> {
    let mut loaded = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if !library.is_file() {
        return Err(ScorerError(format!(
            "no ONNX Runtime library at {} (the onnxruntime package in .venv ships it: `make \
             setup`; or name one with --onnxruntime-lib or {LIBRARY_ENV})",
            library.display()
        )));
    }
    let library = library.canonicalize().map_err(|e| {
        ScorerError(format!("cannot resolve the ONNX Runtime library {}: {e}", library.display()))
    })?;
    if let Some(runtime) = loaded.as_ref() {
        if runtime.library == library {
            return Ok(runtime.clone());
        }
        return Err(ScorerError(format!(
            "ONNX Runtime is already loaded from {}; one process cannot load {} too",
            runtime.library.display(),
            library.display()
        )));
    }
    // ort checks that the library serves its C API version (1.31 or later) before anything else;
    // its errors name the file.
    let ort_failed = |e: &dyn fmt::Display| ScorerError(format!("ONNX Runtime: {e}"));
    let builder = ort::init_from(&library).map_err(|e| ort_failed(&e))?;
    let cannot = |what: String| {
        ScorerError(format!("cannot use the ONNX Runtime library {}: {what}", library.display()))
    };
    // SAFETY: the library is ONNX Runtime (ort has just found its API base in it); loading it
    // again only takes another reference to the copy already loaded.
    let handle =
        unsafe { libloading::Library::new(&library) }.map_err(|e| cannot(e.to_string()))?;
    let version = version_string(&handle).map_err(cannot)?;
    let environment = builder.with_name("candle_server").build().map_err(|e| ort_failed(&e))?;
    let runtime = Arc::new(Runtime { library, version, environment, handle });
    *loaded = Some(runtime.clone());
    Ok(runtime)
}

fn version_string(handle: &libloading::Library) -> Result<String, String> {
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime; the base it returns and
    // the version string live as long as the library.
    unsafe {
        let get_base = handle.get::<GetApiBase>(b"OrtGetApiBase").map_err(|e| e.to_string())?;
        let base = get_base();
        if base.is_null() {
            return Err("OrtGetApiBase returned nothing".into());
        }
        let version = ((*base).GetVersionString)();
        Ok(CStr::from_ptr(version).to_string_lossy().into_owned())
    }
}

/// Appends the CPU execution provider with ONNX Runtime's default arena, as Python's
/// `providers=["CPUExecutionProvider"]` does (`OrtSessionOptionsAppendExecutionProvider_CPU`, an
/// export of the library that `ort` does not wrap).
fn append_cpu_provider(runtime: &Runtime, builder: &mut SessionBuilder) -> Result<(), String> {
    type AppendCpu =
        unsafe extern "C" fn(*mut ort::sys::OrtSessionOptions, c_int) -> ort::sys::OrtStatusPtr;
    const USE_ARENA: c_int = 1;
    // SAFETY: the symbol has this signature in ONNX Runtime's C API; the options pointer is the
    // builder's own, valid while the builder lives; a returned status is owned by the caller and
    // `result_from_status` releases it.
    unsafe {
        let append = runtime
            .handle
            .get::<AppendCpu>(b"OrtSessionOptionsAppendExecutionProvider_CPU")
            .map_err(|e| e.to_string())?;
        ort::Error::result_from_status(append(builder.ptr_mut(), USE_ARENA))
            .map_err(|e| e.to_string())
    }
}

/// The ONNX Runtime scorer: one session per worker over one set of options.
pub struct OnnxRankNet {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    /// What ONNX Runtime reported about the options, read once the sessions were built.
    reported: Vec<(&'static str, ThreadSetting)>,
}

impl fmt::Debug for OnnxRankNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxRankNet")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl OnnxRankNet {
    /// Loads `library` and builds `sessions` sessions (one per worker) of `ranknet.onnx` in
    /// `model_dir`.
    pub fn load(library: &Path, model_dir: &Path, sessions: usize) -> Result<Self, ScorerError> {
        let model = model_dir.join(MODEL_FILE);
        if !model.is_file() {
            return Err(ScorerError(format!(
                "cannot load model from {}: file not found (`make model` creates it)",
                model.display()
            )));
        }
        let runtime = runtime(library)?;
        let failed = |what: &str, e: String| ScorerError(format!("{what}: {e}"));
        let mut builder = session_builder(&runtime).map_err(|e| failed("session options", e))?;
        let built = (0..sessions.max(1))
            .map(|_| {
                let session = builder.commit_from_file(&model).map_err(|e| {
                    failed(&format!("cannot load model from {}", model.display()), e.to_string())
                })?;
                check_signature(&session)
                    .map_err(|e| failed(&format!("{}", model.display()), e))?;
                Ok(Mutex::new(session))
            })
            .collect::<Result<Vec<_>, ScorerError>>()?;
        let reported = report(&runtime, &builder);
        Ok(OnnxRankNet { sessions: built, next: AtomicUsize::new(0), reported })
    }

    /// A session nobody is running, else (more callers than sessions: never in the server) the
    /// next one in turn, waited for.
    fn session(&self) -> MutexGuard<'_, Session> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.sessions.len();
        for k in 0..n {
            if let Ok(session) = self.sessions[(start + k) % n].try_lock() {
                return session;
            }
        }
        self.sessions[start % n].lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// py-onnx's options (see the module docs).
fn session_builder(runtime: &Runtime) -> Result<SessionBuilder, String> {
    let text = |e: ort::Error<SessionBuilder>| e.to_string();
    let mut builder = Session::builder(&runtime.environment)
        .map_err(|e| e.to_string())?
        .with_intra_threads(1)
        .map_err(text)?
        .with_inter_threads(1)
        .map_err(text)?
        .with_parallel_execution(false)
        .map_err(text)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(text)?
        .with_intra_op_spinning(false)
        .map_err(text)?
        .with_inter_op_spinning(false)
        .map_err(text)?;
    append_cpu_provider(runtime, &mut builder)?;
    Ok(builder)
}

fn check_signature(session: &Session) -> Result<(), String> {
    let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    if inputs != [INPUT] || !outputs.contains(&OUTPUT) {
        return Err(format!(
            "expected input '{INPUT}' and output '{OUTPUT}', found inputs {inputs:?} and outputs \
             {outputs:?}"
        ));
    }
    Ok(())
}

/// `runtime_threads` for `/stats`. ONNX Runtime's C API reads back the execution mode and the
/// config entries of the options the sessions were built from; it has no getter for the thread
/// counts or the optimization level, so those are the values given to it (`*_set`).
fn report(runtime: &Runtime, builder: &SessionBuilder) -> Vec<(&'static str, ThreadSetting)> {
    use ThreadSetting::{Count, Text};
    let mut report = vec![
        ("onnxruntime_version", Text(runtime.version.clone())),
        ("onnxruntime_library", Text(runtime.library.display().to_string())),
        ("execution_mode", Text(execution_mode(builder))),
    ];
    for key in SPIN_KEYS {
        report.push((key, Text(config_entry(builder, key))));
    }
    report.extend([
        ("intra_op_num_threads_set", Count(1)),
        ("inter_op_num_threads_set", Count(1)),
        ("graph_optimization_level_set", Text("ORT_ENABLE_ALL".into())),
    ]);
    report
}

fn execution_mode(builder: &SessionBuilder) -> String {
    let mut mode = ort::sys::ExecutionMode::ORT_SEQUENTIAL;
    // SAFETY: a getter on the builder's valid options, writing one enum value.
    let status = unsafe { (ort::api().GetSessionExecutionMode)(builder.ptr(), &mut mode) };
    // SAFETY: the status comes from the call above.
    match unsafe { ort::Error::result_from_status(status) } {
        Ok(()) => format!("{mode:?}"),
        Err(e) => format!("unknown ({e})"),
    }
}

/// A session config entry as ONNX Runtime holds it (`"unset"` when the options have none).
fn config_entry(builder: &SessionBuilder, key: &str) -> String {
    let Ok(key) = CString::new(key) else { return "unset".into() };
    let api = ort::api();
    let mut has: c_int = 0;
    // SAFETY: getters on the builder's valid options; the value is written into a buffer of the
    // size ONNX Runtime asked for, NUL-terminated. Statuses are released by `result_from_status`.
    unsafe {
        let status = (api.HasSessionConfigEntry)(builder.ptr(), key.as_ptr(), &mut has);
        if ort::Error::result_from_status(status).is_err() || has == 0 {
            return "unset".into();
        }
        let mut size = 0usize;
        let status = (api.GetSessionConfigEntry)(
            builder.ptr(),
            key.as_ptr(),
            std::ptr::null_mut(),
            &mut size,
        );
        // Asking for the size with no buffer is answered with an error status and the size.
        let _ = ort::Error::result_from_status(status);
        let mut buffer = vec![0 as c_char; size.max(1)];
        let status = (api.GetSessionConfigEntry)(
            builder.ptr(),
            key.as_ptr(),
            buffer.as_mut_ptr(),
            &mut size,
        );
        match ort::Error::result_from_status(status) {
            Ok(()) => CStr::from_ptr(buffer.as_ptr()).to_string_lossy().into_owned(),
            Err(e) => format!("unreadable ({e})"),
        }
    }
}

impl Scorer for OnnxRankNet {
    fn backend(&self) -> &'static str {
        "onnx"
    }

    fn scores(&self, rows: Vec<f32>) -> Result<Vec<f32>, ScorerError> {
        let n = row_count(&rows)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let failed = |e: ort::Error| ScorerError(format!("ONNX Runtime: {e}"));
        // A view of the rows: ONNX Runtime reads them in place, as it reads a numpy array.
        let x =
            TensorRef::from_array_view(([n, INPUT_FEATURES], rows.as_slice())).map_err(failed)?;
        let mut session = self.session();
        let outputs = session.run(ort::inputs![INPUT => x]).map_err(failed)?;
        let score = outputs
            .get(OUTPUT)
            .ok_or_else(|| ScorerError(format!("ONNX Runtime gave no '{OUTPUT}' output")))?;
        let (_, scores) = score.try_extract_tensor::<f32>().map_err(failed)?;
        if scores.len() != n {
            return Err(ScorerError(format!(
                "ONNX Runtime gave {} scores for {n} rows",
                scores.len()
            )));
        }
        Ok(scores.to_vec())
    }

    fn runtime_threads(&self) -> Vec<(&'static str, ThreadSetting)> {
        let mut report = self.reported.clone();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            let count = u64::try_from(tasks.count()).unwrap_or(u64::MAX);
            report.push(("os_threads", ThreadSetting::Count(count)));
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("candle_server_onnx_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn venv_library_finds_the_package_library() {
        let venv = scratch("venv");
        assert_eq!(venv_library(&venv), None);
        let capi = venv.join("lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).expect("dirs");
        std::fs::write(capi.join("libonnxruntime_providers_shared.so"), b"").expect("file");
        assert_eq!(venv_library(&venv), None, "the providers library is not the runtime");
        std::fs::write(capi.join("libonnxruntime.so.1.32.0"), b"").expect("file");
        assert_eq!(venv_library(&venv), Some(capi.join("libonnxruntime.so.1.32.0")));
        std::fs::remove_dir_all(&venv).ok();
    }

    #[test]
    fn missing_library_and_model_are_one_line_each() {
        let dir = scratch("missing");
        std::fs::create_dir_all(&dir).expect("dir");
        let err = OnnxRankNet::load(&dir.join("libonnxruntime.so"), &dir, 1).expect_err("no model");
        assert!(err.0.contains("ranknet.onnx: file not found"), "{err}");
        std::fs::write(dir.join(MODEL_FILE), b"").expect("model");
        let err = OnnxRankNet::load(&dir.join("libonnxruntime.so"), &dir, 1).expect_err("no lib");
        assert!(err.0.starts_with("no ONNX Runtime library at "), "{err}");
        assert!(!err.0.contains('\n'), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
