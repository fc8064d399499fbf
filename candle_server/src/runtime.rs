//! Process-wide settings for Candle on the CPU, made by the embedding program (the server's
//! `main`, the Python extension at import), and what the runtime reports about its threads.
//!
//! How the compute stays on one thread: Candle's matmul asks `candle_core::utils::get_num_threads`
//! on every call, which reads `RAYON_NUM_THREADS` (else the machine's physical cores); with 1 it
//! calls gemm with `Parallelism::None`, otherwise with `Parallelism::Rayon(n)` for any product
//! larger than gemm's threading threshold, on rayon's global pool. Nothing else in the forward
//! pass of this model runs in parallel.

/// Pins Candle's CPU compute to the calling thread: sets `RAYON_NUM_THREADS=1` (read by Candle's
/// matmul, see the module docs) and `CANDLE_NUM_THREADS=1` (sizes Candle's barrier pool, used by
/// quantized kernels only). Call it first thing in `main`, before any thread exists, because it
/// writes the process environment. Returns the thread count Candle now reports.
pub fn use_single_compute_thread() -> usize {
    std::env::set_var("RAYON_NUM_THREADS", "1");
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    candle_core::utils::get_num_threads()
}

/// Sets glibc's malloc to keep freed blocks for reuse (mmap and trim thresholds fixed at 32 MiB).
///
/// Every Candle op allocates its output; at 1,000 rows a forward pass allocates about 4.5 MB in
/// 0.5-1 MB tensors. With glibc's default, adaptive thresholds those come from fresh `mmap`s or
/// a heap top that is trimmed back to the kernel after each request, so every request
/// page-faults its tensors in again: measured, the forward pass at 1,000 rows took 1.7 ms instead
/// of 0.9 ms (`examples/infer_bench.rs`, thread CPU time). ONNX Runtime (its own arena) and
/// PyTorch (its CPU allocator cache) avoid the same cost. Process-wide; returns false where the
/// allocator is not glibc's (nothing is changed then).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD: libc::c_int = 32 << 20;
        // SAFETY: mallopt only sets allocator parameters (it takes the arena lock itself).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// One reported setting: a count, or a text as the runtime gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(serde::Serialize), serde(untagged))]
pub enum ThreadSetting {
    Count(u64),
    Text(String),
}

/// What governs the forward pass's threads, as the runtime reports it now on the calling thread
/// (call it where inference runs):
///
/// - `candle_get_num_threads`: what Candle's matmul reads on every call (1: gemm without
///   parallelism);
/// - `rayon_current_num_threads`: rayon's pool size from this thread, the pool gemm would use
///   otherwise (asking it starts rayon's global pool if nothing has yet: one idle thread when
///   `RAYON_NUM_THREADS=1`);
/// - `gemm_threading_threshold`: gemm's minimum `m * n * k` for going parallel at all;
/// - `RAYON_NUM_THREADS`, `CANDLE_NUM_THREADS`: the process environment that sets the above
///   (`"unset"` when absent);
/// - `os_threads`: threads of this process (Linux), so that a pool that was started shows.
pub fn runtime_threads() -> Vec<(&'static str, ThreadSetting)> {
    use ThreadSetting::{Count, Text};
    let count = |n: usize| Count(u64::try_from(n).unwrap_or(u64::MAX));
    let env = |name: &str| Text(std::env::var(name).unwrap_or_else(|_| "unset".into()));
    let mut settings = vec![
        ("candle_get_num_threads", count(candle_core::utils::get_num_threads())),
        ("rayon_current_num_threads", count(rayon::current_num_threads())),
        ("gemm_threading_threshold", count(gemm::get_threading_threshold())),
        ("RAYON_NUM_THREADS", env("RAYON_NUM_THREADS")),
        ("CANDLE_NUM_THREADS", env("CANDLE_NUM_THREADS")),
    ];
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        settings.push(("os_threads", count(tasks.count())));
    }
    settings
}
