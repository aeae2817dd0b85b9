//! The shadow model's ONNX graphs: one SGD step, and a per-sample evaluation.
//!
//! ORT's training API is not in the stock builds, so a whole optimiser step is one inference
//! graph: it takes the batch, the weights and the step (momentum) buffers and returns the updated
//! weights and buffers plus each sample's loss (computed before the update). The gradients are
//! derived by hand for the MLP and checked against finite differences in the tests.

use crate::onnx::{encode, Attr, Dim, Elem, GraphBuilder};

const BATCH: Dim = Dim::Symbolic("batch");

/// The MLP's shape: `features -> hidden... -> classes`, ReLU between layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpShape {
    pub features: usize,
    pub hidden: Vec<usize>,
    pub classes: usize,
}

impl MlpShape {
    /// `(fan_in, fan_out)` of every dense layer, input first.
    pub fn layers(&self) -> Vec<(usize, usize)> {
        let mut widths = vec![self.features];
        widths.extend(&self.hidden);
        widths.push(self.classes);
        widths.windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// Names and shapes of the parameters in graph order: W0, b0, W1, b1, ...
    pub fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        self.layers()
            .iter()
            .enumerate()
            .flat_map(|(i, &(fan_in, fan_out))| {
                [(format!("W{i}"), vec![fan_in, fan_out]), (format!("b{i}"), vec![fan_out])]
            })
            .collect()
    }

    /// Multiply-adds x2 of one forward pass per sample.
    pub fn forward_flops_per_sample(&self) -> f64 {
        self.layers().iter().map(|&(i, o)| 2.0 * (i * o) as f64).sum()
    }

    /// FLOPs of one train step per sample: forward, weight gradients, and the input gradients
    /// of every layer but the first (the data needs none).
    pub fn train_flops_per_sample(&self) -> f64 {
        let layers = self.layers();
        let back_inputs: f64 = layers.iter().skip(1).map(|&(i, o)| 2.0 * (i * o) as f64).sum();
        2.0 * self.forward_flops_per_sample() + back_inputs
    }
}

fn dims(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::Fixed(d)).collect()
}

/// Inputs shared by both graphs: the batch, its labels and the parameters.
/// Where a train step's batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchInput {
    /// Inputs `x [batch, features]` and `y [batch]`, copied in for every step.
    Given,
    /// Inputs `x_all [rows, features]` and `y_all [rows]` (the whole window, bound once and
    /// kept where the execution provider computes) and `idx [batch]`: the batch is gathered
    /// from the window inside the graph, so only the indices travel per step.
    Gathered,
}

fn declare_batch_and_params(g: &mut GraphBuilder, shape: &MlpShape, batch: BatchInput) -> Vec<String> {
    match batch {
        BatchInput::Given => {
            g.input("x", Elem::F32, &[BATCH, Dim::Fixed(shape.features)]);
            g.input("y", Elem::I64, &[BATCH]);
        }
        BatchInput::Gathered => {
            const ROWS: Dim = Dim::Symbolic("rows");
            g.input("x_all", Elem::F32, &[ROWS, Dim::Fixed(shape.features)]);
            g.input("y_all", Elem::I64, &[ROWS]);
            g.input("idx", Elem::I64, &[BATCH]);
            g.op_named("Gather", &["x_all", "idx"], "x", vec![Attr::Int("axis", 0)]);
            g.op_named("Gather", &["y_all", "idx"], "y", vec![Attr::Int("axis", 0)]);
        }
    }
    shape.parameters().iter().map(|(name, s)| g.input(name, Elem::F32, &dims(s))).collect()
}

/// Forward pass; returns every layer's input activation and the logits.
fn forward(g: &mut GraphBuilder, params: &[String]) -> (Vec<String>, String) {
    let n_layers = params.len() / 2;
    let mut activations = vec!["x".to_string()];
    let mut z = String::new();
    for layer in 0..n_layers {
        let a = activations.last().unwrap().clone();
        z = g.gemm(&a, &params[2 * layer], Some(&params[2 * layer + 1]), false, false);
        if layer + 1 < n_layers {
            activations.push(g.op("Relu", &[&z], vec![]));
        }
    }
    (activations, z)
}

/// Per-sample cross-entropy from logits, written to `loss_name`; returns `(log_probs, one_hot)`.
fn cross_entropy(g: &mut GraphBuilder, logits: &str, classes: usize, loss_name: &str) -> (String, String) {
    let log_probs = g.op("LogSoftmax", &[logits], vec![Attr::Int("axis", 1)]);
    let depth = g.const_i64(&[], vec![classes as i64]);
    let values = g.const_f32(&[2], vec![0.0, 1.0]);
    let one_hot = g.op("OneHot", &["y", &depth, &values], vec![Attr::Int("axis", -1)]);
    let picked = g.op("Mul", &[&one_hot, &log_probs], vec![]);
    let summed = g.reduce_sum(&picked, 1);
    g.op_named("Neg", &[&summed], loss_name, vec![]);
    (log_probs, one_hot)
}

/// The train-step graph. Inputs: `x[N,D]`, `y[N]` (int64), `W0, b0, ...`, `step_size` (scalar:
/// the learning rate over N, the batch's rows), `ones[1,N]` (ones), `vW0, vb0, ...` (the step
/// buffers, see below). Outputs: `loss[N]`, then `W0_next, b0_next, ...`, then `vW0_next,
/// vb0_next, ...`.
///
/// The update is PyTorch's SGD (`g += wd * p; v = momentum * v + g; p -= lr * v`) with the
/// buffer kept as `u = lr * v`, which is the same sequence of weights while `lr` is constant
/// ([`super::ShadowModel::set_learning_rate`] rescales `u` when it changes). In that form the
/// whole update of a weight matrix is one Gemm and one Sub: `lr / N` scales the small
/// `[N, classes]` gradient at the top, so every gradient below comes out times `lr`, and the
/// Gemm adds `momentum * u` itself (its `beta`). The elementwise passes over the weights, which
/// cost as much as the matrix products at these sizes, drop from six to one. `momentum` and
/// `weight_decay` are therefore constants of the graph; a zero weight decay adds nothing.
/// `lr / N` and the row of ones (for the bias steps) come in from the caller, who knows N:
/// built in the graph they took seven small ops a step.
pub fn train_step_graph(shape: &MlpShape, momentum: f32, weight_decay: f32) -> Vec<u8> {
    train_step_graph_with(shape, momentum, weight_decay, BatchInput::Given)
}

/// [`train_step_graph`] with the batch taken as `batch` says.
pub fn train_step_graph_with(
    shape: &MlpShape,
    momentum: f32,
    weight_decay: f32,
    batch: BatchInput,
) -> Vec<u8> {
    let momentum_value = momentum;
    let mut g = GraphBuilder::new("lossgate_train_step");
    let params = declare_batch_and_params(&mut g, shape, batch);
    let step_size = g.input("step_size", Elem::F32, &[]);
    let ones_row = g.input("ones", Elem::F32, &[Dim::Fixed(1), BATCH]);
    let buffers: Vec<String> = shape
        .parameters()
        .iter()
        .map(|(name, s)| g.input(&format!("v{name}"), Elem::F32, &dims(s)))
        .collect();

    let (activations, logits) = forward(&mut g, &params);
    let (log_probs, one_hot) = cross_entropy(&mut g, &logits, shape.classes, "loss");

    // lr * d(mean loss)/d(logits) = (softmax - one_hot) * lr / N
    let probs = g.op("Exp", &[&log_probs], vec![]);
    let diff = g.op("Sub", &[&probs, &one_hot], vec![]);
    let mut upstream = g.op("Mul", &[&diff, &step_size], vec![]);
    // lr * wd = step_size * N * wd, for the decay term (only built when there is one).
    let lr_decay = (weight_decay != 0.0).then(|| {
        let n = g.reduce_sum(&ones_row, 1);
        let n = g.op("Squeeze", &[&n], vec![]);
        let wd = g.const_f32(&[], vec![weight_decay]);
        let lr = g.op("Mul", &[&step_size, &n], vec![]);
        g.op("Mul", &[&lr, &wd], vec![])
    });

    // Each bias's shape, for the bias steps.
    let bias_shapes: Vec<String> =
        shape.layers().iter().map(|&(_, fan_out)| g.const_i64(&[1], vec![fan_out as i64])).collect();
    let zero_f32 = g.const_f32(&[], vec![0.0]);
    // u_next = momentum * u + lr * grad (+ lr * wd * p), named as the graph outputs it.
    // Without decay a step is already the next buffer.
    let finish_step = |g: &mut GraphBuilder, step: String, param: &str, buffer: &str| -> String {
        let Some(lr_decay) = &lr_decay else { return step };
        let buffer_next = format!("{buffer}_next");
        let decay = g.op("Mul", &[lr_decay, param], vec![]);
        g.op_named("Add", &[&step, &decay], &buffer_next, vec![]);
        buffer_next
    };

    let n_layers = params.len() / 2;
    let mut buffers_next = vec![String::new(); params.len()];
    for layer in (0..n_layers).rev() {
        let (w, b) = (2 * layer, 2 * layer + 1);
        let input = &activations[layer];
        let weight_step = match lr_decay {
            // Without decay the Gemm writes the output itself: no copy of the matrix.
            None => {
                let name = format!("{}_next", buffers[w]);
                let attrs = vec![Attr::Int("transA", 1), Attr::Float("beta", momentum_value)];
                g.op_named("Gemm", &[input, &upstream, &buffers[w]], &name, attrs);
                name
            }
            Some(_) => {
                let attrs = vec![Attr::Int("transA", 1), Attr::Float("beta", momentum_value)];
                let step = g.op("Gemm", &[input, &upstream, &buffers[w]], attrs);
                finish_step(&mut g, step, &params[w], &buffers[w])
            }
        };
        // The bias step as one small Gemm, ones[1, N] x upstream + momentum * u: cheaper than
        // a ReduceSum over the batch and the two elementwise ops after it.
        let bias_row = g.gemm_with(&ones_row, &upstream, &buffers[b], momentum_value);
        let bias_step = match lr_decay {
            None => {
                let name = format!("{}_next", buffers[b]);
                g.op_named("Reshape", &[&bias_row, &bias_shapes[layer]], &name, vec![]);
                name
            }
            Some(_) => g.op("Reshape", &[&bias_row, &bias_shapes[layer]], vec![]),
        };
        buffers_next[w] = weight_step;
        buffers_next[b] = finish_step(&mut g, bias_step, &params[b], &buffers[b]);
        if layer > 0 {
            // ReLU's derivative: the layer input is relu(z), positive exactly where z > 0.
            let d_input = g.gemm(&upstream, &params[w], None, false, true);
            let active = g.op("Greater", &[input, &zero_f32], vec![]);
            upstream = g.op("Where", &[&active, &d_input, &zero_f32], vec![]);
        }
    }

    let mut param_outputs = Vec::new();
    for (param, buffer_next) in params.iter().zip(&buffers_next) {
        let param_next = format!("{param}_next");
        g.op_named("Sub", &[param, buffer_next], &param_next, vec![]);
        param_outputs.push(param_next);
    }
    let buffer_outputs = buffers_next;

    g.output("loss", Elem::F32, &[BATCH]);
    for ((name, s), v) in shape.parameters().iter().zip(&param_outputs) {
        debug_assert_eq!(&format!("{name}_next"), v);
        g.output(v, Elem::F32, &dims(s));
    }
    for ((_, s), v) in shape.parameters().iter().zip(&buffer_outputs) {
        g.output(v, Elem::F32, &dims(s));
    }
    encode(&g.finish())
}

/// The evaluation graph. Inputs: `x`, `y`, `W0, b0, ...`. Outputs: `loss[N]` and the predicted
/// class `pred[N]` (int64).
pub fn eval_graph(shape: &MlpShape) -> Vec<u8> {
    let mut g = GraphBuilder::new("lossgate_eval");
    let params = declare_batch_and_params(&mut g, shape, BatchInput::Given);
    let (_, logits) = forward(&mut g, &params);
    cross_entropy(&mut g, &logits, shape.classes, "loss");
    g.op_named("ArgMax", &[&logits], "pred", vec![Attr::Int("axis", 1), Attr::Int("keepdims", 0)]);
    g.output("loss", Elem::F32, &[BATCH]);
    g.output("pred", Elem::I64, &[BATCH]);
    encode(&g.finish())
}

/// The matrix products of one train step and nothing else, for measuring the GEMM ceiling.
/// Inputs: for every layer `a{i}[N,in]`, `W{i}[in,out]`, `g{i}[N,out]`. Outputs: the forward
/// product, the weight gradient, and (beyond the first layer) the input gradient.
pub fn gemm_only_graph(shape: &MlpShape) -> Vec<u8> {
    let mut g = GraphBuilder::new("lossgate_gemm_ceiling");
    for (i, &(fan_in, fan_out)) in shape.layers().iter().enumerate() {
        let a = g.input(&format!("a{i}"), Elem::F32, &[BATCH, Dim::Fixed(fan_in)]);
        let w = g.input(&format!("W{i}"), Elem::F32, &[Dim::Fixed(fan_in), Dim::Fixed(fan_out)]);
        let up = g.input(&format!("g{i}"), Elem::F32, &[BATCH, Dim::Fixed(fan_out)]);
        let fwd = g.gemm(&a, &w, None, false, false);
        g.output(&fwd, Elem::F32, &[BATCH, Dim::Fixed(fan_out)]);
        let dw = g.gemm(&a, &up, None, true, false);
        g.output(&dw, Elem::F32, &[Dim::Fixed(fan_in), Dim::Fixed(fan_out)]);
        if i > 0 {
            let da = g.gemm(&up, &w, None, false, true);
            g.output(&da, Elem::F32, &[BATCH, Dim::Fixed(fan_in)]);
        }
    }
    encode(&g.finish())
}
