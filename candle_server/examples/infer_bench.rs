//! Times the forward pass alone, single-threaded, as the server runs it (`pre` + `infer`):
//!
//!     cargo run --release --example infer_bench -- [model_dir] [iterations]
//!
//! For each batch size it prints the mean microseconds of: building the input tensor from a row
//! buffer (`pre`), `RankNet::scores` (the `infer` stage: forward pass + copy out), the same
//! forward pass on the weights as PyTorch lays them out (what plain `candle_nn::Linear` does),
//! and the ops of the forward pass timed kind by kind. Set GLIBC_DEFAULT_MALLOC=1 to time with
//! glibc's default malloc thresholds instead of the server's (`runtime::keep_freed_memory`).

use std::hint::black_box;
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_server::model::{self, RankNet, INPUT_FEATURES, WEIGHTS_FILE};
use candle_server::runtime;

/// CPU time this thread has run, in ns: unlike wall time it does not count the time other
/// processes of a shared machine had the core.
fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass and reads nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Mean microseconds per call: thread CPU time where Linux reports it, else wall time.
fn time_us(iterations: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 + 1 {
        f();
    }
    let (cpu, wall) = (thread_cpu_ns(), Instant::now());
    for _ in 0..iterations {
        f();
    }
    let elapsed_ns = match (cpu, thread_cpu_ns()) {
        (Some(a), Some(b)) => (b - a) as f64,
        _ => wall.elapsed().as_nanos() as f64,
    };
    elapsed_ns / 1e3 / f64::from(iterations)
}

/// The weights as separate tensors: `(in, out)` contiguous, plus the original `(out, in)`.
struct Transposed {
    layers: Vec<(Tensor, Tensor)>,
    original: Vec<Tensor>,
}

impl Transposed {
    fn load(path: &std::path::Path) -> candle_core::Result<Self> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
        let layer = |name: &str| -> candle_core::Result<(Tensor, Tensor)> {
            let w = tensors[&format!("{name}.weight")].t()?.contiguous()?;
            let b = tensors[&format!("{name}.bias")].clone();
            Ok((w, b))
        };
        let original = ["fc1", "fc2", "fc3"].map(|n| tensors[&format!("{n}.weight")].clone());
        Ok(Transposed {
            layers: vec![layer("fc1")?, layer("fc2")?, layer("fc3")?],
            original: original.to_vec(),
        })
    }

    /// candle_nn::Linear's arithmetic on the weights as PyTorch stores them: `x @ w.t()` with
    /// `w` row-major `(out, in)`, so the right-hand side is a strided (column-major) view.
    fn forward_strided(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, ((_, b), w)) in self.layers.iter().zip(&self.original).enumerate() {
            h = h.matmul(&w.t()?)?.broadcast_add(b)?;
            if i < 2 {
                h = h.relu()?;
            }
        }
        candle_nn::ops::sigmoid(&h)?.squeeze(1)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads = runtime::use_single_compute_thread();
    if std::env::var_os("GLIBC_DEFAULT_MALLOC").is_none() {
        // As the server does at start.
        runtime::keep_freed_memory();
    }
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "../artifacts".into());
    let iterations: u32 = args.next().map(|v| v.parse()).transpose()?.unwrap_or(20_000);
    let net = RankNet::load_dir(&dir)?;
    let alt = Transposed::load(&std::path::Path::new(&dir).join(WEIGHTS_FILE))?;
    let clock = if thread_cpu_ns().is_some() { "thread CPU" } else { "wall-clock" };
    println!("candle threads {threads}; mean {clock} microseconds per call");
    println!(
        "{:>5} {:>7} {:>9} {:>10} | {:>8} {:>8} {:>8} {:>8} {:>8}",
        "rows", "tensor", "scores", "strided-w", "matmuls", "biases", "relus", "sigmoid", "to_vec"
    );
    for n in [1usize, 10, 100, 1000] {
        let iters = (iterations / (n as u32).clamp(1, 100)).max(200);
        let rows: Vec<f32> =
            (0..n * INPUT_FEATURES).map(|i| ((i % 97) as f32 - 48.0) / 24.0).collect();
        let x = Tensor::from_slice(&rows, (n, INPUT_FEATURES), &Device::Cpu)?;
        let tensor = time_us(iters, || {
            black_box(model::input_tensor(black_box(rows.clone())).expect("tensor"));
        });
        // What the server's infer stage runs: forward pass and copy of the scores to a Vec.
        let scores = time_us(iters, || {
            black_box(net.scores(black_box(&x)).expect("scores"));
        });
        // candle_nn::Linear with PyTorch's (out, in) weight as stored: a strided transpose.
        let strided = time_us(iters, || {
            black_box(alt.forward_strided(black_box(&x)).expect("forward"));
        });
        // The pieces of the forward pass, one kind of op at a time.
        let (w1, w2, w3) = (&alt.layers[0].0, &alt.layers[1].0, &alt.layers[2].0);
        let (b1, b2, b3) = (&alt.layers[0].1, &alt.layers[1].1, &alt.layers[2].1);
        let h1 = x.matmul(w1)?;
        let h2 = h1.matmul(w2)?;
        let h3 = h2.matmul(w3)?;
        let matmuls = time_us(iters, || {
            black_box(x.matmul(w1).expect("mm1"));
            black_box(h1.matmul(w2).expect("mm2"));
            black_box(h2.matmul(w3).expect("mm3"));
        });
        let biases = time_us(iters, || {
            black_box(h1.broadcast_add(b1).expect("b1"));
            black_box(h2.broadcast_add(b2).expect("b2"));
            black_box(h3.broadcast_add(b3).expect("b3"));
        });
        let relus = time_us(iters, || {
            black_box(h1.relu().expect("r1"));
            black_box(h2.relu().expect("r2"));
        });
        let sigmoid = time_us(iters, || {
            black_box(candle_nn::ops::sigmoid(&h3).expect("sigmoid"));
        });
        let flat = h3.squeeze(1)?;
        let to_vec = time_us(iters, || {
            black_box(flat.to_vec1::<f32>().expect("to_vec"));
        });
        // Same scores either way (the comparison is only meaningful if so).
        let a = net.scores(&x)?;
        let b = alt.forward_strided(&x)?.to_vec1::<f32>()?;
        let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-6, "formulations disagree by {worst}");
        println!(
            "{n:>5} {tensor:>7.2} {scores:>9.2} {strided:>10.2} | {matmuls:>8.2} {biases:>8.2} {relus:>8.2} {sigmoid:>8.2} {to_vec:>8.2}"
        );
    }
    let _ = Module::forward(&net, &Tensor::zeros((1, INPUT_FEATURES), DType::F32, &Device::Cpu)?)?;
    Ok(())
}
