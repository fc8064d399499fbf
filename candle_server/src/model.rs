//! RankNet in Candle: `Linear(40,256) -> ReLU -> Linear(256,128) -> ReLU -> Linear(128,1) -> sigmoid`.
//!
//! Weights come from `ranknet.safetensors` (PyTorch `Linear` layout, `(out, in)`), read through a
//! `VarBuilder` whose paths (`fc1.weight`, `fc1.bias`, ...) are the exported tensor names.
//! Everything here is f32 on the CPU and free of server concerns, so the Python binding reuses it.
//!
//! Two process-wide settings matter for speed and are left to the embedding program: one compute
//! thread and, for batches of several hundred rows, an allocator that keeps freed tensors for
//! reuse (every op allocates its output); both are in [`crate::runtime`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

/// Features per user row in the database.
pub const USER_FEATURES: usize = 30;
/// Features per item row in the database.
pub const ITEM_FEATURES: usize = 10;
/// One model input row: the user's features followed by one item's.
pub const INPUT_FEATURES: usize = USER_FEATURES + ITEM_FEATURES;
const HIDDEN_1: usize = 256;
const HIDDEN_2: usize = 128;

/// File name of the weights inside the model directory.
pub const WEIGHTS_FILE: &str = "ranknet.safetensors";

#[derive(Debug)]
pub enum ModelError {
    /// The weights could not be read or do not describe this model.
    Load { path: PathBuf, message: String },
    /// The caller's input does not have the expected shape.
    Input(String),
    /// Candle failed while running the forward pass.
    Candle(candle_core::Error),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Load { path, message } => {
                write!(f, "cannot load model from {}: {message}", path.display())
            }
            ModelError::Input(message) => write!(f, "bad model input: {message}"),
            ModelError::Candle(err) => write!(f, "model forward pass failed: {err}"),
        }
    }
}

impl std::error::Error for ModelError {}

impl From<candle_core::Error> for ModelError {
    fn from(err: candle_core::Error) -> Self {
        ModelError::Candle(err)
    }
}

/// The scoring model. Cheap to share: the weights are reference-counted tensors.
#[derive(Clone, Debug)]
pub struct RankNet {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

impl RankNet {
    /// Builds the layers from a `VarBuilder`; shapes are checked against the architecture.
    pub fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            fc1: gemm_friendly(linear(INPUT_FEATURES, HIDDEN_1, vb.pp("fc1"))?)?,
            fc2: gemm_friendly(linear(HIDDEN_1, HIDDEN_2, vb.pp("fc2"))?)?,
            fc3: gemm_friendly(linear(HIDDEN_2, 1, vb.pp("fc3"))?)?,
        })
    }

    /// Loads the weights from a safetensors file (read into memory; 170 KB, no mmap needed).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let load_error = |message: String| ModelError::Load { path: path.to_path_buf(), message };
        if !path.is_file() {
            return Err(load_error("file not found (`make model` creates it)".into()));
        }
        let device = Device::Cpu;
        let tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load(path, &device).map_err(|e| load_error(e.to_string()))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        Self::new(vb).map_err(|e| load_error(e.to_string()))
    }

    /// Loads `ranknet.safetensors` from a model directory (the contract's `--model-dir`).
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::load(dir.as_ref().join(WEIGHTS_FILE))
    }

    /// `(N, 40)` f32 input -> `(N,)` scores in (0, 1).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let hidden = self.fc1.forward(x)?.relu()?;
        let hidden = self.fc2.forward(&hidden)?.relu()?;
        let logits = self.fc3.forward(&hidden)?;
        candle_nn::ops::sigmoid(&logits)?.squeeze(1)
    }

    /// Scores of an `(N, 40)` input tensor, in row order. `N = 0` gives no scores without
    /// running the forward pass.
    pub fn scores(&self, x: &Tensor) -> Result<Vec<f32>, ModelError> {
        let (n, features) = x.dims2()?;
        if features != INPUT_FEATURES {
            return Err(ModelError::Input(format!(
                "input has {features} features per row, expected {INPUT_FEATURES}"
            )));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        Ok(self.forward(x)?.to_vec1::<f32>()?)
    }

    /// Scores a row-major `(N, 40)` buffer (see [`input_rows`]).
    pub fn score_rows(&self, rows: Vec<f32>) -> Result<Vec<f32>, ModelError> {
        self.scores(&input_tensor(rows)?)
    }

    /// Like [`RankNet::score_rows`] for a borrowed buffer (copied once into the input tensor).
    pub fn score_slice(&self, rows: &[f32]) -> Result<Vec<f32>, ModelError> {
        let n = row_count(rows.len())?;
        self.scores(&Tensor::from_slice(rows, (n, INPUT_FEATURES), &Device::Cpu)?)
    }
}

/// The same layer with its weight stored so that the transpose `Linear::forward` takes is
/// contiguous. `Linear` computes `x @ weight.t()`; with PyTorch's `(out, in)` row-major weight
/// that transpose is a strided view, and gemm then packs a column-major right-hand side on every
/// call. Keeping the weight as the `(out, in)` view of a row-major `(in, out)` buffer makes the
/// transpose a plain row-major matrix: same arithmetic, same scores (the parity test checks),
/// about half the forward-pass time at 10 rows (`examples/infer_bench.rs`).
fn gemm_friendly(layer: Linear) -> candle_core::Result<Linear> {
    let weight = layer.weight().t()?.contiguous()?.t()?;
    Ok(Linear::new(weight, layer.bias().cloned()))
}

impl Module for RankNet {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        RankNet::forward(self, x)
    }
}

fn row_count(len: usize) -> Result<usize, ModelError> {
    if !len.is_multiple_of(INPUT_FEATURES) {
        return Err(ModelError::Input(format!(
            "{len} values is not a whole number of {INPUT_FEATURES}-feature rows"
        )));
    }
    Ok(len / INPUT_FEATURES)
}

/// The `(N, 40)` f32 input tensor over a row-major buffer; the buffer becomes the tensor's
/// storage without a copy.
pub fn input_tensor(rows: Vec<f32>) -> Result<Tensor, ModelError> {
    let n = row_count(rows.len())?;
    Ok(Tensor::from_vec(rows, (n, INPUT_FEATURES), &Device::Cpu)?)
}

/// Builds the row-major `(N, 40)` model input: row `i` is `user` followed by `items[i]`.
pub fn input_rows<'a, I>(user: &[f32], items: I) -> Result<Vec<f32>, ModelError>
where
    I: IntoIterator<Item = &'a [f32]>,
    I::IntoIter: ExactSizeIterator,
{
    let items = items.into_iter();
    let mut rows = Vec::with_capacity(items.len() * INPUT_FEATURES);
    push_rows(&mut rows, user, items)?;
    Ok(rows)
}

/// Appends to `rows` one model input row per item: `user` followed by the item's features (a
/// batch of several users' rows is built by calling it once per user).
pub fn push_rows<'a, I>(rows: &mut Vec<f32>, user: &[f32], items: I) -> Result<(), ModelError>
where
    I: IntoIterator<Item = &'a [f32]>,
{
    if user.len() != USER_FEATURES {
        return Err(ModelError::Input(format!(
            "user has {} features, expected {USER_FEATURES}",
            user.len()
        )));
    }
    for (index, item) in items.into_iter().enumerate() {
        if item.len() != ITEM_FEATURES {
            return Err(ModelError::Input(format!(
                "item row {index} has {} features, expected {ITEM_FEATURES}",
                item.len()
            )));
        }
        rows.extend_from_slice(user);
        rows.extend_from_slice(item);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_model(scale: f32) -> RankNet {
        // Deterministic weights small enough to compute the expected score by hand.
        let device = Device::Cpu;
        let mut tensors = HashMap::new();
        let fill =
            |shape: &[usize], value: f32| Tensor::full(value, shape, &device).expect("tensor");
        tensors.insert("fc1.weight".to_owned(), fill(&[HIDDEN_1, INPUT_FEATURES], scale));
        tensors.insert("fc1.bias".to_owned(), fill(&[HIDDEN_1], 0.0));
        tensors.insert("fc2.weight".to_owned(), fill(&[HIDDEN_2, HIDDEN_1], scale));
        tensors.insert("fc2.bias".to_owned(), fill(&[HIDDEN_2], 0.0));
        tensors.insert("fc3.weight".to_owned(), fill(&[1, HIDDEN_2], scale));
        tensors.insert("fc3.bias".to_owned(), fill(&[1], -1.0));
        RankNet::new(VarBuilder::from_tensors(tensors, DType::F32, &device)).expect("model")
    }

    #[test]
    fn forward_matches_hand_computation() {
        let model = tiny_model(0.01);
        // Row 0 all ones, row 1 all zeros.
        let mut rows = vec![1.0f32; INPUT_FEATURES];
        rows.extend(std::iter::repeat_n(0.0f32, INPUT_FEATURES));
        let scores = model.score_rows(rows).expect("scores");
        let h1 = 40.0 * 0.01f32;
        let h2 = 256.0 * 0.01 * h1;
        let logit = 128.0 * 0.01 * h2 - 1.0;
        let expected = 1.0 / (1.0 + (-logit).exp());
        assert_eq!(scores.len(), 2);
        assert!((scores[0] - expected).abs() < 1e-6, "{} vs {expected}", scores[0]);
        let zero_input = 1.0 / (1.0 + 1.0f32.exp());
        assert!((scores[1] - zero_input).abs() < 1e-6, "{} vs {zero_input}", scores[1]);
    }

    #[test]
    fn empty_and_ragged_inputs() {
        let model = tiny_model(0.01);
        assert!(model.score_rows(Vec::new()).expect("empty").is_empty());
        let err = model.score_slice(&[0.0; 41]).expect_err("ragged");
        assert!(err.to_string().contains("41 values"), "{err}");
    }

    #[test]
    fn input_rows_concatenates_user_then_item() {
        let user: Vec<f32> = (0..USER_FEATURES).map(|v| v as f32).collect();
        let a = [100.0f32; ITEM_FEATURES];
        let b = [200.0f32; ITEM_FEATURES];
        let rows = input_rows(&user, [&a[..], &b[..]]).expect("rows");
        assert_eq!(rows.len(), 2 * INPUT_FEATURES);
        assert_eq!(&rows[..USER_FEATURES], &user[..]);
        assert_eq!(&rows[USER_FEATURES..INPUT_FEATURES], &a[..]);
        assert_eq!(&rows[INPUT_FEATURES..INPUT_FEATURES + USER_FEATURES], &user[..]);
        assert_eq!(&rows[INPUT_FEATURES + USER_FEATURES..], &b[..]);
    }

    #[test]
    fn push_rows_appends_each_users_rows() {
        let (alice, bob) = ([1.0f32; USER_FEATURES], [2.0f32; USER_FEATURES]);
        let (x, y) = ([10.0f32; ITEM_FEATURES], [20.0f32; ITEM_FEATURES]);
        let mut rows = Vec::new();
        push_rows(&mut rows, &alice, [&x[..], &y[..]]).expect("alice");
        push_rows(&mut rows, &bob, [&y[..]]).expect("bob");
        let want: Vec<f32> = [(&alice, &x), (&alice, &y), (&bob, &y)]
            .iter()
            .flat_map(|(user, item)| user.iter().chain(item.iter()).copied())
            .collect();
        assert_eq!(rows, want);
        // A row of the wrong length is refused, naming it.
        let err = push_rows(&mut rows, &bob, [&x[..], &x[..3]]).expect_err("short item");
        assert!(err.to_string().contains("item row 1 has 3 features"), "{err}");
    }

    #[test]
    fn input_rows_rejects_wrong_lengths() {
        let user = [0.0f32; USER_FEATURES - 1];
        let item = [0.0f32; ITEM_FEATURES];
        let err = input_rows(&user, [&item[..]]).expect_err("short user");
        assert!(err.to_string().contains("user has 29 features"), "{err}");
        let user = [0.0f32; USER_FEATURES];
        let short = [0.0f32; 3];
        let err = input_rows(&user, [&item[..], &short[..]]).expect_err("short item");
        assert!(err.to_string().contains("item row 1 has 3 features"), "{err}");
    }

    #[test]
    fn load_reports_missing_file_and_wrong_shapes() {
        let dir = std::env::temp_dir().join(format!("candle_server_model_{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let err = RankNet::load_dir(&dir).expect_err("missing");
        assert!(err.to_string().contains("file not found"), "{err}");

        let device = Device::Cpu;
        let wrong = HashMap::from([(
            "fc1.weight".to_owned(),
            Tensor::zeros((INPUT_FEATURES, HIDDEN_1), DType::F32, &device).expect("t"),
        )]);
        let path = dir.join(WEIGHTS_FILE);
        candle_core::safetensors::save(&wrong, &path).expect("save");
        let err = RankNet::load(&path).expect_err("transposed weight");
        assert!(err.to_string().contains("fc1.weight"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
