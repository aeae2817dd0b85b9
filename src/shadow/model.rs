//! The shadow model: an MLP whose weights live in ONNX Runtime values between steps.

use std::borrow::Cow;

use anyhow::{anyhow, Context, Result};
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{Session, SessionInputValue, SessionOutputs};
use ort::value::{DynValue, Tensor, TensorRef};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::graphs::{eval_graph, train_step_graph, train_step_graph_with, BatchInput, MlpShape};
use super::runtime::ExecutionProvider;
use super::runtime::Runtime;
use super::subnormals::flushing_subnormals;

/// SGD with momentum and weight decay, as PyTorch applies it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sgd {
    pub learning_rate: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

/// Per-sample loss and predicted class from one evaluation pass.
pub struct Evaluation {
    pub loss: Vec<f32>,
    pub predicted: Vec<i64>,
}

/// A window's samples where the execution provider computes (GPU memory on CUDA), uploaded once
/// and gathered from by index for every batch (see [`ShadowModel::upload_window`]).
pub struct ResidentWindow {
    x: DynValue,
    y: DynValue,
    rows: usize,
}

/// One resident train step's per-sample losses, left where they were computed until the
/// epoch ends ([`Self::to_host`]), so that a GPU step never waits on a copy.
pub struct ResidentLosses {
    losses: DynValue,
}

impl ResidentLosses {
    pub fn to_host(self) -> Result<Vec<f32>> {
        host_values(&self.losses)
    }
}

/// A tensor's values on the host, copied there when a device holds them. The weights and step
/// buffers move between the two (a fresh model and the host path's outputs are on the host, the
/// resident path's on the device), so each value is asked where it is.
fn host_values(value: &DynValue) -> Result<Vec<f32>> {
    let tensor = value.view().downcast::<ort::value::DynTensorValueType>()?;
    if tensor.memory_info().is_cpu_accessible() {
        return Ok(tensor.try_extract_tensor::<f32>()?.1.to_vec());
    }
    let copy = tensor.to(AllocationDevice::CPU, 0).context("copying a tensor from the device")?;
    Ok(copy.try_extract_tensor::<f32>()?.1.to_vec())
}

pub struct ShadowModel {
    shape: MlpShape,
    train: Session,
    /// The train step that gathers its batch from a [`ResidentWindow`].
    train_gathered: Session,
    eval: Session,
    /// Where the resident path keeps the window, the weights and the step buffers.
    device: AllocationDevice<'static>,
    parameter_names: Vec<String>,
    velocity_names: Vec<String>,
    /// Weights and step buffers (`lr` times PyTorch's momentum buffer, see
    /// [`train_step_graph`]): ORT's outputs of one step are fed back as the next step's inputs,
    /// so they never leave ORT's memory during training.
    parameters: Vec<DynValue>,
    velocities: Vec<DynValue>,
    learning_rate: f32,
    /// The train step's per-batch constants for the last batch size seen.
    batch_constants: Option<BatchConstants>,
}

/// What the train step needs besides the batch and the state, for batches of `rows`:
/// `step_size = lr / rows` and a `[1, rows]` row of ones.
struct BatchConstants {
    rows: usize,
    step_size: DynValue,
    ones: DynValue,
}

impl BatchConstants {
    /// The constants in `cached` for batches of `rows`, made again only when the size changes
    /// (the last batch of an epoch) or the learning rate did (which empties the cache).
    fn for_rows(cached: &mut Option<Self>, learning_rate: f32, rows: usize) -> Result<&Self> {
        if cached.as_ref().is_none_or(|c| c.rows != rows) {
            *cached = Some(Self {
                rows,
                step_size: scalar(learning_rate / rows.max(1) as f32)?,
                ones: tensor(&[1, rows], vec![1.0; rows])?,
            });
        }
        Ok(cached.as_ref().expect("filled above"))
    }
}

fn scalar(v: f32) -> Result<DynValue> {
    Ok(Tensor::from_array((Vec::<i64>::new(), vec![v]))?.into_dyn())
}

fn tensor(shape: &[usize], data: Vec<f32>) -> Result<DynValue> {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Ok(Tensor::from_array((dims, data))?.into_dyn())
}

/// The batch as borrowed tensors: ORT reads `x` and `y` where they are (a step's batch is
/// 400 KB at 784 features; copying it cost a few per cent of a step).
fn batch_inputs<'a>(
    x: &'a [f32],
    y: &'a [i64],
    features: usize,
) -> Result<Vec<(Cow<'a, str>, SessionInputValue<'a>)>> {
    let n = y.len();
    if x.len() != n * features {
        return Err(anyhow!("batch of {n} labels has {} feature values, expected {}", x.len(), n * features));
    }
    let x = TensorRef::from_array_view(([n, features], x))?;
    let y = TensorRef::from_array_view(([n], y))?;
    Ok(vec![(Cow::Borrowed("x"), x.into()), (Cow::Borrowed("y"), y.into())])
}

/// A train step's `{name}_next` outputs: the weights and step buffers of the next step.
fn next_state(
    parameters: &[String],
    velocities: &[String],
    outputs: &mut SessionOutputs<'_>,
) -> Result<(Vec<DynValue>, Vec<DynValue>)> {
    let mut take = |name: &String| {
        outputs.remove(format!("{name}_next")).ok_or_else(|| anyhow!("train step lost output {name}_next"))
    };
    let parameters = parameters.iter().map(&mut take).collect::<Result<Vec<_>>>()?;
    let velocities = velocities.iter().map(&mut take).collect::<Result<Vec<_>>>()?;
    Ok((parameters, velocities))
}

impl ShadowModel {
    /// Builds both graphs for `shape`, opens their sessions and initialises weights from `seed`.
    pub fn new(runtime: &Runtime, shape: MlpShape, sgd: Sgd, seed: u64) -> Result<Self> {
        let train = runtime
            .session(&train_step_graph(&shape, sgd.momentum, sgd.weight_decay))
            .context("opening the train-step graph")?;
        let train_gathered = runtime
            .session(&train_step_graph_with(&shape, sgd.momentum, sgd.weight_decay, BatchInput::Gathered))
            .context("opening the gathering train-step graph")?;
        let eval = runtime.session(&eval_graph(&shape)).context("opening the evaluation graph")?;
        let device = match runtime.provider() {
            ExecutionProvider::Cpu => AllocationDevice::CPU,
            ExecutionProvider::Cuda => AllocationDevice::CUDA,
        };
        let parameter_names: Vec<String> = shape.parameters().into_iter().map(|(n, _)| n).collect();
        let velocity_names = parameter_names.iter().map(|n| format!("v{n}")).collect();
        let mut model = Self {
            shape,
            train,
            train_gathered,
            eval,
            device,
            parameter_names,
            velocity_names,
            parameters: Vec::new(),
            velocities: Vec::new(),
            learning_rate: sgd.learning_rate,
            batch_constants: None,
        };
        model.reset(seed)?;
        Ok(model)
    }

    /// A fresh model: PyTorch's default Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
    /// weights and biases, and zero momentum.
    pub fn reset(&mut self, seed: u64) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut parameters = Vec::new();
        let mut velocities = Vec::new();
        for (i, (_, shape)) in self.shape.parameters().iter().enumerate() {
            let fan_in = self.shape.layers()[i / 2].0 as f32;
            let bound = 1.0 / fan_in.sqrt();
            let len: usize = shape.iter().product();
            let values = (0..len).map(|_| rng.random_range(-bound..bound)).collect();
            parameters.push(tensor(shape, values)?);
            velocities.push(tensor(shape, vec![0.0; len])?);
        }
        self.parameters = parameters;
        self.velocities = velocities;
        Ok(())
    }

    /// Changes the SGD learning rate from the next step on (schedules). The step buffers
    /// hold `lr * v`, so they are rescaled to the new rate: the momentum PyTorch carries over
    /// is `v`, whatever the rate.
    pub fn set_learning_rate(&mut self, learning_rate: f32) -> Result<()> {
        let ratio = learning_rate / self.learning_rate;
        let shapes = self.shape.parameters();
        self.velocities = self
            .velocities
            .iter()
            .zip(&shapes)
            .map(|(v, (_, shape))| {
                let values = host_values(v)?.into_iter().map(|x| x * ratio).collect();
                tensor(shape, values)
            })
            .collect::<Result<_>>()?;
        self.learning_rate = learning_rate;
        self.batch_constants = None;
        Ok(())
    }

    /// One SGD step on a batch; returns each sample's loss before the update.
    pub fn train_step(&mut self, x: &[f32], y: &[i64]) -> Result<Vec<f32>> {
        let constants = BatchConstants::for_rows(&mut self.batch_constants, self.learning_rate, y.len())?;
        let mut inputs = batch_inputs(x, y, self.shape.features)?;
        for (name, value) in self.parameter_names.iter().zip(&self.parameters) {
            inputs.push((Cow::Borrowed(name.as_str()), value.into()));
        }
        inputs.push((Cow::Borrowed("step_size"), (&constants.step_size).into()));
        inputs.push((Cow::Borrowed("ones"), (&constants.ones).into()));
        for (name, value) in self.velocity_names.iter().zip(&self.velocities) {
            inputs.push((Cow::Borrowed(name.as_str()), value.into()));
        }
        let mut outputs = flushing_subnormals(|| self.train.run(inputs)).context("running the train step")?;
        let loss = outputs["loss"].try_extract_tensor::<f32>()?.1.to_vec();
        let (parameters, velocities) = next_state(&self.parameter_names, &self.velocity_names, &mut outputs)?;
        drop(outputs);
        self.parameters = parameters;
        self.velocities = velocities;
        Ok(loss)
    }

    /// Per-sample loss and prediction without changing the weights.
    pub fn evaluate(&mut self, x: &[f32], y: &[i64]) -> Result<Evaluation> {
        let mut inputs = batch_inputs(x, y, self.shape.features)?;
        for (name, value) in self.parameter_names.iter().zip(&self.parameters) {
            inputs.push((Cow::Borrowed(name.as_str()), value.into()));
        }
        let outputs =
            flushing_subnormals(|| self.eval.run(inputs)).context("running the evaluation graph")?;
        Ok(Evaluation {
            loss: outputs["loss"].try_extract_tensor::<f32>()?.1.to_vec(),
            predicted: outputs["pred"].try_extract_tensor::<i64>()?.1.to_vec(),
        })
    }

    /// Copies a window to where the execution provider computes, once: the resident train step
    /// and evaluation read it there. `features` is row-major, one row per label.
    pub fn upload_window(&self, features: &[f32], labels: &[i64]) -> Result<ResidentWindow> {
        let rows = labels.len();
        let x = tensor(&[rows, self.shape.features], features.to_vec())?;
        let y = Tensor::from_array((vec![rows as i64], labels.to_vec()))?.into_dyn();
        Ok(ResidentWindow { x: self.on_device(x)?, y: self.on_device(y)?, rows })
    }

    /// Whether the execution provider computes on a GPU (where the resident path pays).
    /// The SGD learning rate the next step uses.
    pub fn learning_rate(&self) -> f32 {
        self.learning_rate
    }

    pub fn computes_on_gpu(&self) -> bool {
        self.device != AllocationDevice::CPU
    }

    fn on_device(&self, value: DynValue) -> Result<DynValue> {
        if self.device == AllocationDevice::CPU {
            return Ok(value);
        }
        let tensor = value.downcast::<ort::value::DynTensorValueType>()?;
        Ok(tensor.to(self.device.clone(), 0).context("copying the window to the device")?.into_dyn())
    }

    fn device_memory(&self) -> Result<MemoryInfo<'static>> {
        Ok(MemoryInfo::new(self.device.clone(), 0, AllocatorType::Device, MemoryType::Default)?)
    }

    /// One SGD step on the rows `rows` of `window`, gathered on the device. The weights and
    /// step buffers stay on the device: the step's outputs are bound there and become the next
    /// step's inputs; only the row indices are copied in (the step size and the row of ones
    /// are made once per batch size). The batch's losses (before the update) stay there too.
    pub fn train_step_resident(&mut self, window: &ResidentWindow, rows: &[i64]) -> Result<ResidentLosses> {
        if let Some(&bad) = rows.iter().find(|&&r| r < 0 || r as usize >= window.rows) {
            return Err(anyhow!("row {bad} is outside the resident window of {} rows", window.rows));
        }
        let idx = Tensor::from_array((vec![rows.len() as i64], rows.to_vec()))?.into_dyn();
        let device = self.device_memory()?;
        let constants = BatchConstants::for_rows(&mut self.batch_constants, self.learning_rate, rows.len())?;
        let mut binding = self.train_gathered.create_binding()?;
        binding.bind_input("x_all", &window.x)?;
        binding.bind_input("y_all", &window.y)?;
        binding.bind_input("idx", &idx)?;
        binding.bind_input("step_size", &constants.step_size)?;
        binding.bind_input("ones", &constants.ones)?;
        for (name, value) in self.parameter_names.iter().zip(&self.parameters) {
            binding.bind_input(name.as_str(), value)?;
        }
        for (name, value) in self.velocity_names.iter().zip(&self.velocities) {
            binding.bind_input(name.as_str(), value)?;
        }
        // Every output is left where it was computed.
        for name in self.parameter_names.iter().chain(&self.velocity_names) {
            binding.bind_output_to_device(format!("{name}_next"), &device)?;
        }
        binding.bind_output_to_device("loss", &device)?;
        let mut outputs = flushing_subnormals(|| self.train_gathered.run_binding(&binding))
            .context("running the resident train step")?;
        let (parameters, velocities) = next_state(&self.parameter_names, &self.velocity_names, &mut outputs)?;
        let losses = outputs.remove("loss").ok_or_else(|| anyhow!("train step lost output loss"))?;
        drop(outputs);
        self.parameters = parameters;
        self.velocities = velocities;
        Ok(ResidentLosses { losses })
    }

    /// Every row's loss on the resident window, in one run: the losses are the only thing
    /// copied back to the host.
    pub fn evaluate_resident(&mut self, window: &ResidentWindow) -> Result<Vec<f32>> {
        let host = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)?;
        let mut binding = self.eval.create_binding()?;
        binding.bind_input("x", &window.x)?;
        binding.bind_input("y", &window.y)?;
        for (name, value) in self.parameter_names.iter().zip(&self.parameters) {
            binding.bind_input(name.as_str(), value)?;
        }
        binding.bind_output_to_device("loss", &host)?;
        let outputs = flushing_subnormals(|| self.eval.run_binding(&binding))
            .context("evaluating the resident window")?;
        Ok(outputs["loss"].try_extract_tensor::<f32>()?.1.to_vec())
    }

    /// Copies the weights out of ORT (W0, b0, W1, b1, ... flattened row-major), from the
    /// device where the resident path left them.
    pub fn parameters(&self) -> Result<Vec<Vec<f32>>> {
        self.parameters.iter().map(host_values).collect()
    }

    /// Replaces the weights (same order and sizes as [`Self::parameters`]); momentum is kept.
    pub fn set_parameters(&mut self, values: Vec<Vec<f32>>) -> Result<()> {
        let shapes = self.shape.parameters();
        if values.len() != shapes.len() {
            return Err(anyhow!("expected {} parameter tensors, got {}", shapes.len(), values.len()));
        }
        self.parameters = shapes.iter().zip(values).map(|((_, s), v)| tensor(s, v)).collect::<Result<_>>()?;
        Ok(())
    }
}
