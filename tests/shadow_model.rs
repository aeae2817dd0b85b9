//! The shadow model on the real ONNX Runtime: gradients, optimiser, determinism, MNIST.

mod common;

use lossgate::engine::trajectory::{
    record_loss_matrix, record_loss_matrix_resident, record_loss_matrix_training_on, TrainingPlan,
};
use lossgate::shadow::graphs::{eval_graph, train_step_graph};
use lossgate::shadow::{LossRecording, MlpShape, Sgd, ShadowModel};
use rand::{Rng, SeedableRng};

const PLAIN_SGD: Sgd = Sgd { learning_rate: 1.0, momentum: 0.0, weight_decay: 0.0 };

fn random_batch(n: usize, features: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<i64>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x = (0..n * features).map(|_| rng.random_range(-1.0..1.0)).collect();
    let y = (0..n).map(|_| rng.random_range(0..classes as i64)).collect();
    (x, y)
}

fn mean_loss(model: &mut ShadowModel, x: &[f32], y: &[i64]) -> f64 {
    let loss = model.evaluate(x, y).unwrap().loss;
    loss.iter().map(|&l| l as f64).sum::<f64>() / loss.len() as f64
}

/// With lr = 1 and no momentum, one step moves the weights by exactly minus the gradient of the
/// batch's mean loss; compare that with central finite differences of the evaluation graph.
fn check_gradients(hidden: Vec<usize>) {
    let runtime = common::runtime();
    let shape = MlpShape { features: 5, hidden, classes: 3 };
    let (x, y) = random_batch(7, 5, 3, 11);
    let mut model = ShadowModel::new(&runtime, shape, PLAIN_SGD, 5).unwrap();
    let before = model.parameters().unwrap();
    model.train_step(&x, &y).unwrap();
    let after = model.parameters().unwrap();

    let eps = 1e-3f32;
    model.set_parameters(before.clone()).unwrap();
    let base = mean_loss(&mut model, &x, &y);
    let (mut checked, mut at_kinks) = (0, 0);
    for tensor in 0..before.len() {
        for index in 0..before[tensor].len() {
            let analytic = (before[tensor][index] - after[tensor][index]) as f64;
            let mut nudged = before.clone();
            nudged[tensor][index] += eps;
            model.set_parameters(nudged.clone()).unwrap();
            let up = mean_loss(&mut model, &x, &y);
            nudged[tensor][index] -= 2.0 * eps;
            model.set_parameters(nudged).unwrap();
            let down = mean_loss(&mut model, &x, &y);
            // A ReLU switching inside [-eps, eps] makes the one-sided slopes disagree: no
            // derivative to compare with there.
            let (right, left) = ((up - base) / eps as f64, (base - down) / eps as f64);
            if (right - left).abs() > 0.05 * right.abs().max(left.abs()) + 5e-3 {
                at_kinks += 1;
                continue;
            }
            let numeric = (up - down) / (2.0 * eps as f64);
            assert!(
                (analytic - numeric).abs() <= 2e-3 + 0.02 * numeric.abs(),
                "parameter {tensor}[{index}]: analytic {analytic}, finite difference {numeric}"
            );
            checked += 1;
        }
    }
    assert!(checked > 15 && at_kinks * 10 < checked, "{checked} checked, {at_kinks} at ReLU kinks");
}

#[test]
fn gradients_match_finite_differences_for_logistic_regression() {
    check_gradients(vec![]);
}

#[test]
fn gradients_match_finite_differences_with_one_hidden_layer() {
    check_gradients(vec![6]);
}

#[test]
fn gradients_match_finite_differences_with_two_hidden_layers() {
    check_gradients(vec![6, 4]);
}

#[test]
fn momentum_and_weight_decay_follow_pytorch_sgd() {
    let runtime = common::runtime();
    let shape = MlpShape { features: 4, hidden: vec![3], classes: 3 };
    let (x, y) = random_batch(5, 4, 3, 2);
    let mut plain = ShadowModel::new(&runtime, shape.clone(), PLAIN_SGD, 9).unwrap();
    let start = plain.parameters().unwrap();
    plain.train_step(&x, &y).unwrap();
    let gradient: Vec<Vec<f32>> = start
        .iter()
        .zip(plain.parameters().unwrap())
        .map(|(a, b)| a.iter().zip(b).map(|(a, b)| a - b).collect())
        .collect();

    let sgd = Sgd { learning_rate: 0.1, momentum: 0.9, weight_decay: 0.01 };
    let mut model = ShadowModel::new(&runtime, shape, sgd, 9).unwrap();
    model.train_step(&x, &y).unwrap();
    for ((p0, g), p1) in start.iter().zip(&gradient).zip(model.parameters().unwrap()) {
        for ((p0, g), p1) in p0.iter().zip(g).zip(p1) {
            // v = g + wd * p (momentum buffer starts at 0); p -= lr * v
            let expected = p0 - 0.1 * (g + 0.01 * p0);
            assert!((expected - p1).abs() < 1e-5, "expected {expected}, got {p1}");
        }
    }
}

/// Three steps with momentum and weight decay, the learning rate cut tenfold before the third
/// (as the victim's schedule does), against PyTorch's update computed here from the gradients
/// that plain SGD (lr 1, no momentum) measures at each step's weights.
#[test]
fn several_steps_with_momentum_decay_and_a_learning_rate_change_follow_pytorch_sgd() {
    let runtime = common::runtime();
    let shape = MlpShape { features: 4, hidden: vec![3], classes: 3 };
    let (x, y) = random_batch(6, 4, 3, 8);
    let (momentum, weight_decay) = (0.9f32, 0.01f32);
    let rates = [0.1f32, 0.1, 0.01];
    let mut model =
        ShadowModel::new(&runtime, shape.clone(), Sgd { learning_rate: rates[0], momentum, weight_decay }, 3)
            .unwrap();
    let mut probe = ShadowModel::new(&runtime, shape, PLAIN_SGD, 3).unwrap();
    let mut expected = model.parameters().unwrap();
    let mut velocity: Vec<Vec<f32>> = expected.iter().map(|p| vec![0.0; p.len()]).collect();
    for (step, &lr) in rates.iter().enumerate() {
        // The gradient at the current weights: one plain step from them.
        probe.set_parameters(expected.clone()).unwrap();
        probe.train_step(&x, &y).unwrap();
        let moved = probe.parameters().unwrap();
        for ((p, v), after) in expected.iter_mut().zip(&mut velocity).zip(&moved) {
            for ((p, v), after) in p.iter_mut().zip(v.iter_mut()).zip(after) {
                let g = (*p - after) + weight_decay * *p;
                *v = momentum * *v + g;
                *p -= lr * *v;
            }
        }
        if step > 0 && lr != rates[step - 1] {
            model.set_learning_rate(lr).unwrap();
        }
        model.train_step(&x, &y).unwrap();
        for (e, got) in expected.iter().flatten().zip(model.parameters().unwrap().iter().flatten()) {
            assert!((e - got).abs() < 1e-5, "step {step}: expected {e}, got {got}");
        }
    }
}

#[test]
fn graphs_written_to_files_load_in_onnx_runtime() {
    let runtime = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let shape = MlpShape { features: 784, hidden: vec![256], classes: 10 };
    for (name, bytes) in
        [("train.onnx", train_step_graph(&shape, 0.9, 0.0)), ("eval.onnx", eval_graph(&shape))]
    {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let session = runtime.session_from_file(&path).unwrap();
        assert!(session.inputs().iter().any(|i| i.name() == "x"));
        assert!(session.outputs().iter().any(|o| o.name() == "loss"));
    }
}

fn mnist_losses(seed: u64) -> ndarray::Array2<f32> {
    let runtime = common::runtime();
    let data = common::mnist_train(2000);
    let shape = MlpShape { features: 784, hidden: vec![64], classes: 10 };
    let sgd = Sgd { learning_rate: 0.1, momentum: 0.9, weight_decay: 0.0 };
    let mut model = ShadowModel::new(&runtime, shape, sgd, seed).unwrap();
    let plan = TrainingPlan { epochs: 3, batch_size: 128, seed, recording: LossRecording::AfterEpoch };
    record_loss_matrix(&mut model, data.features.view(), &data.labels, plan, |_| {}).unwrap()
}

#[test]
fn training_on_mnist_lowers_the_loss_and_repeats_exactly_with_the_same_seed() {
    let losses = mnist_losses(4);
    let means: Vec<f32> = losses.mean_axis(ndarray::Axis(0)).unwrap().to_vec();
    assert!(means[0] < 1.0, "after one epoch the mean loss should be far below ln(10) = 2.3: {means:?}");
    assert!(means[2] < means[0], "loss should keep falling: {means:?}");
    assert_eq!(losses, mnist_losses(4), "same seed, same CPU: same loss matrix");
    assert_ne!(losses, mnist_losses(5), "another seed should train differently");
}

/// At-step losses are taken before each row's own update, after-epoch ones after the whole
/// epoch: with a learning rate of 0 the model never moves, so the two matrices are the same;
/// with learning, the rows left out of training (evaluated after each epoch either way) match
/// exactly, and the trained rows' at-step losses lag behind (higher on average).
#[test]
fn at_step_losses_are_each_rows_loss_at_its_own_step() {
    let runtime = common::runtime();
    let data = common::mnist_train(600);
    let shape = MlpShape { features: 784, hidden: vec![32], classes: 10 };
    let train_rows: Vec<usize> = (0..data.len()).filter(|i| i % 4 != 0).collect();
    let matrices = |learning_rate: f32| {
        both_recordings().map(|recording| {
            let sgd = Sgd { learning_rate, momentum: 0.9, weight_decay: 0.0 };
            let mut model = ShadowModel::new(&runtime, shape.clone(), sgd, 1).unwrap();
            let plan = TrainingPlan { epochs: 3, batch_size: 50, seed: 2, recording };
            record_loss_matrix_training_on(
                &mut model,
                data.features.view(),
                &data.labels,
                &train_rows,
                plan,
                |_| {},
            )
            .unwrap()
        })
    };
    let [at_step, after_epoch] = matrices(0.0);
    let worst = at_step.iter().zip(after_epoch.iter()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5, "without learning the recordings differ by {worst}");

    let [at_step, after_epoch] = matrices(0.05);
    for row in (0..data.len()).filter(|i| i % 4 == 0) {
        assert_eq!(at_step.row(row), after_epoch.row(row), "untrained row {row}");
    }
    let trained_mean = |m: &ndarray::Array2<f32>| train_rows.iter().map(|&r| m[[r, 0]]).sum::<f32>();
    assert!(
        trained_mean(&at_step) > trained_mean(&after_epoch),
        "the first epoch's at-step losses include the untrained start"
    );
}

fn both_recordings() -> [LossRecording; 2] {
    [LossRecording::AtStep, LossRecording::AfterEpoch]
}

/// The device-resident path (window uploaded once, batches gathered by index in the graph,
/// weights and buffers bound as the execution provider's own outputs, losses fetched once per
/// epoch) run on the CPU provider gives the host path's loss matrix: same batches, same
/// arithmetic. With momentum and weight decay, training on a subset of the rows (the second
/// pass), and either way of recording the losses.
#[test]
fn the_device_resident_path_gives_the_same_loss_matrix_as_the_host_path() {
    let runtime = common::runtime();
    let data = common::mnist_train(1500);
    let shape = MlpShape { features: 784, hidden: vec![64], classes: 10 };
    let sgd = Sgd { learning_rate: 0.05, momentum: 0.9, weight_decay: 5e-4 };
    let train_rows: Vec<usize> = (0..data.len()).filter(|i| i % 5 != 0).collect();
    let mut resident_model = ShadowModel::new(&runtime, shape.clone(), sgd, 1).unwrap();
    for recording in both_recordings() {
        let plan = TrainingPlan { epochs: 4, batch_size: 100, seed: 7, recording };
        let mut host_model = ShadowModel::new(&runtime, shape.clone(), sgd, 1).unwrap();
        let host = record_loss_matrix_training_on(
            &mut host_model,
            data.features.view(),
            &data.labels,
            &train_rows,
            plan,
            |_| {},
        )
        .unwrap();
        let mut epochs_seen = 0;
        let resident = record_loss_matrix_resident(
            &mut resident_model,
            data.features.view(),
            &data.labels,
            &train_rows,
            plan,
            |_| epochs_seen += 1,
        )
        .unwrap();
        assert_eq!(epochs_seen, 4);
        assert_eq!(resident.dim(), host.dim());
        let worst = host
            .iter()
            .zip(resident.iter())
            .map(|(a, b)| (a - b).abs() / a.abs().max(1e-3))
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{recording:?}: largest relative difference between the paths: {worst}");
        let weights = |m: &ShadowModel| m.parameters().unwrap().concat();
        let (a, b) = (weights(&host_model), weights(&resident_model));
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5), "the weights end the same");
    }
    // A row outside the window is refused, not read out of bounds on the device.
    let window = resident_model.upload_window(data.features.as_slice().unwrap(), &data.labels).unwrap();
    assert!(resident_model.train_step_resident(&window, &[0, 1500]).is_err());
}

#[test]
fn cuda_that_cannot_load_is_refused_or_falls_back_to_cpu_when_allowed() {
    use lossgate::shadow::{ExecutionProvider, Runtime, RuntimeOptions};
    // This machine has no GPU and the CPU build of ONNX Runtime: CUDA cannot load here.
    let strict = RuntimeOptions { execution_provider: ExecutionProvider::Cuda, ..Default::default() };
    let err = format!("{:#}", Runtime::load(&strict).err().expect("CUDA must not load on a CPU-only host"));
    assert!(err.contains("CUDA") || err.contains("cuda"), "{err}");
    assert!(err.contains("cuda_fallback_to_cpu"), "the error says how to run anyway: {err}");

    let lenient = RuntimeOptions { cuda_fallback_to_cpu: true, ..strict };
    let runtime = Runtime::load(&lenient).unwrap();
    assert_eq!(runtime.provider(), ExecutionProvider::Cpu);
}

/// On a GPU host (`scripts/gpu-check.sh` runs it with `--ignored`; this machine has no GPU):
/// the resident path on CUDA trains like the host path on the CPU, and the weights and step
/// buffers it leaves on the device can be read back and rescaled by a learning-rate change
/// (the calibration's re-check does that between windows). CUDA's matrix products may round
/// differently (other summation orders, TF32 where it is on), so the two agree to a
/// tolerance, not exactly.
#[test]
#[ignore = "needs a GPU and the onnxruntime-gpu library: scripts/gpu-check.sh runs it"]
fn on_a_gpu_the_resident_path_trains_like_the_cpu_and_its_state_reads_back() {
    use lossgate::shadow::{ExecutionProvider, Runtime, RuntimeOptions};
    let cuda =
        Runtime::load(&RuntimeOptions { execution_provider: ExecutionProvider::Cuda, ..Default::default() })
            .expect("CUDA must load on the GPU host");
    let cpu = common::runtime();
    let data = common::mnist_train(1500);
    let shape = MlpShape { features: 784, hidden: vec![64], classes: 10 };
    let sgd = Sgd { learning_rate: 0.05, momentum: 0.9, weight_decay: 5e-4 };
    let rows: Vec<usize> = (0..data.len()).collect();
    for recording in both_recordings() {
        let plan = TrainingPlan { epochs: 4, batch_size: 100, seed: 7, recording };
        let mut on_gpu = ShadowModel::new(&cuda, shape.clone(), sgd, 1).unwrap();
        assert!(on_gpu.computes_on_gpu());
        let mut on_cpu = ShadowModel::new(&cpu, shape.clone(), sgd, 1).unwrap();
        let gpu =
            record_loss_matrix_resident(&mut on_gpu, data.features.view(), &data.labels, &rows, plan, |_| {})
                .unwrap();
        let host = record_loss_matrix_training_on(
            &mut on_cpu,
            data.features.view(),
            &data.labels,
            &rows,
            plan,
            |_| {},
        )
        .unwrap();
        let mean_gap = (&gpu - &host).mapv(f32::abs).mean().unwrap();
        let mean_loss = host.mean().unwrap();
        assert!(
            mean_gap < 0.02 * mean_loss,
            "{recording:?}: mean |GPU - CPU| loss {mean_gap} against mean {mean_loss}"
        );
        let last = gpu.ncols() - 1;
        assert!(
            gpu.column(last).mean().unwrap() < 0.5 * gpu.column(0).mean().unwrap(),
            "the GPU shadow learns"
        );
        // The state the resident steps left on the device reads back and survives a rate change.
        on_gpu.set_learning_rate(0.01).unwrap();
        let weights = on_gpu.parameters().unwrap().concat();
        assert!(weights.iter().all(|w| w.is_finite()));
        let after =
            record_loss_matrix_resident(&mut on_gpu, data.features.view(), &data.labels, &rows, plan, |_| {});
        assert!(after.unwrap().iter().all(|l| l.is_finite()));
    }
}
