//! Criterion benchmarks of the engine's stages. `lossgate bench` prints the same workloads as
//! a table with GFLOP/s and the train step's share of the GEMM ceiling.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lossgate::bench::{mnist_shape, scorer, synthetic_trajectories, GemmCeiling, TrainStep, WholeWindow};
use lossgate::scorer::IndexKind;
use lossgate::shadow::{Runtime, RuntimeOptions};
use lossgate::EngineConfig;

fn runtime() -> Runtime {
    Runtime::load(&RuntimeOptions::default()).expect("ONNX Runtime: run scripts/setup.sh")
}

fn shadow(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("shadow_784_256_10");
    group.throughput(Throughput::Elements(128));
    let mut step = TrainStep::new(&runtime, mnist_shape(), 128).unwrap();
    group.bench_function("train_step_batch_128", |b| b.iter(|| step.run().unwrap()));
    let mut gemm = GemmCeiling::new(&runtime, &mnist_shape(), 128).unwrap();
    group.bench_function("gemm_ceiling_batch_128", |b| b.iter(|| gemm.run().unwrap()));
    group.throughput(Throughput::Elements(1024));
    let mut eval = TrainStep::new(&runtime, mnist_shape(), 1024).unwrap();
    group.bench_function("eval_batch_1024", |b| b.iter(|| eval.evaluate().unwrap()));
    group.finish();
}

fn window(c: &mut Criterion) {
    let runtime = runtime();
    let config = EngineConfig::default();
    let mut group = c.benchmark_group("window");
    group.sample_size(10);
    group.throughput(Throughput::Elements((config.window.size + config.probes.count) as u64));
    let mut window = WholeWindow::new(&runtime, config).unwrap();
    group.bench_function("default_window_4096_samples_250_probes_10_epochs", |b| {
        b.iter(|| window.run().unwrap())
    });
    group.finish();
}

fn scoring(c: &mut Criterion) {
    let queries = synthetic_trajectories(1000, 30, 6);
    let mut group = c.benchmark_group("scorer_k50");
    group.throughput(Throughput::Elements(queries.nrows() as u64));
    for probes in [250, 2_500, 25_000] {
        let probe_rows = synthetic_trajectories(probes, 30, 5);
        for (name, index) in [("hnsw", IndexKind::Hnsw), ("exact", IndexKind::Exact)] {
            let s = scorer(&probe_rows, index);
            group.bench_with_input(BenchmarkId::new(name, probes), &probes, |b, _| {
                b.iter(|| std::hint::black_box(s.score_rows(queries.view())))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, shadow, window, scoring);
criterion_main!(benches);
