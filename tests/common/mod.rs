//! Shared set-up for integration tests: the real ONNX Runtime library and real MNIST, both
//! installed by `scripts/setup.sh` into the cache (see the README).
#![allow(dead_code, unreachable_pub)] // each test crate uses a part; `pub` is for its modules

pub mod tansu;
pub use tansu as broker;
pub mod corpus;
pub mod firewall;

use std::path::PathBuf;

use lossgate::data::{read_idx_pair, LabelledSamples};
use lossgate::shadow::{Runtime, RuntimeOptions};

pub fn runtime() -> Runtime {
    Runtime::load(&RuntimeOptions::default()).expect("ONNX Runtime must be installed: run scripts/setup.sh")
}

pub fn mnist_dir() -> PathBuf {
    std::env::var_os("LOSSGATE_MNIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| lossgate::shadow::runtime::cache_dir().join("mnist"))
}

/// The first `n` MNIST training images (pixels in [0, 1]).
pub fn mnist_train(n: usize) -> LabelledSamples {
    let dir = mnist_dir();
    let all = read_idx_pair(&dir.join("train-images-idx3-ubyte"), &dir.join("train-labels-idx1-ubyte"))
        .expect("MNIST must be installed: run scripts/setup.sh");
    all.slice(0, n)
}

/// The first `n` MNIST test images.
pub fn mnist_test(n: usize) -> LabelledSamples {
    let dir = mnist_dir();
    let all = read_idx_pair(&dir.join("t10k-images-idx3-ubyte"), &dir.join("t10k-labels-idx1-ubyte"))
        .expect("MNIST must be installed: run scripts/setup.sh");
    all.slice(0, n)
}
