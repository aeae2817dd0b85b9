//! Loading ONNX Runtime and opening sessions on the configured execution provider.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use serde::{Deserialize, Serialize};

/// Where the shadow model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    #[default]
    Cpu,
    Cuda,
}

/// How to reach ONNX Runtime. The library path comes from, in order: this setting,
/// `ORT_DYLIB_PATH`, or the setup script's cache (`$LOSSGATE_CACHE/onnxruntime-1.31.1/`).
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeOptions {
    pub library: Option<PathBuf>,
    pub execution_provider: ExecutionProvider,
    pub cuda_fallback_to_cpu: bool,
    pub intra_threads: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            library: None,
            execution_provider: ExecutionProvider::Cpu,
            cuda_fallback_to_cpu: false,
            intra_threads: 1,
        }
    }
}

/// The cache folder the setup script fills (`LOSSGATE_CACHE`, default `~/.cache/lossgate`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOSSGATE_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("lossgate")
}

pub fn default_library_path() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    cache_dir().join("onnxruntime-1.31.1").join("libonnxruntime.so.1.31.1")
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

/// Loads the ONNX Runtime library once per process.
fn environment(library: &Path) -> Result<Environment> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env.clone());
    }
    if !library.exists() {
        bail!(
            "ONNX Runtime library not found at {}: run `scripts/setup.sh` (or `make setup`), \
             or point ORT_DYLIB_PATH / shadow.onnxruntime_library at libonnxruntime.so",
            library.display()
        );
    }
    let env = ort::init_from(library)
        .with_context(|| format!("loading ONNX Runtime from {}", library.display()))?
        .with_name("lossgate")
        .build()
        .context("creating the ONNX Runtime environment")?;
    Ok(ENVIRONMENT.get_or_init(|| env).clone())
}

/// A loaded ONNX Runtime with the execution provider that actually works on this host.
#[derive(Clone)]
pub struct Runtime {
    env: Environment,
    provider: ExecutionProvider,
    intra_threads: usize,
}

impl Runtime {
    /// Loads ONNX Runtime and checks the execution provider by opening a tiny session on it.
    /// CUDA that cannot load is an error naming what is missing, unless `cuda_fallback_to_cpu`.
    pub fn load(options: &RuntimeOptions) -> Result<Self> {
        let library = options.library.clone().unwrap_or_else(default_library_path);
        let env = environment(&library)?;
        let mut runtime =
            Self { env, provider: options.execution_provider, intra_threads: options.intra_threads };
        if runtime.provider == ExecutionProvider::Cuda {
            let probe = super::graphs::eval_graph(&super::graphs::MlpShape {
                features: 2,
                hidden: vec![],
                classes: 2,
            });
            if let Err(e) = runtime.session(&probe) {
                if !options.cuda_fallback_to_cpu {
                    return Err(e.context(
                        "the CUDA execution provider could not start (set shadow.cuda_fallback_to_cpu = true to run on CPU instead)",
                    ));
                }
                tracing::warn!(error = %format!("{e:#}"), "CUDA execution provider unavailable; falling back to CPU");
                runtime.provider = ExecutionProvider::Cpu;
            }
        }
        Ok(runtime)
    }

    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    /// Opens a session for a model stored in an `.onnx` file.
    pub fn session_from_file(&self, path: &Path) -> Result<Session> {
        Session::builder(&self.env)?
            .commit_from_file(path)
            .with_context(|| format!("ONNX Runtime refused the model file {}", path.display()))
    }

    /// Opens a session for an in-memory model: one intra-op thread by default and no spinning,
    /// since lossgate shares its CPU with the consumer and the other sessions.
    pub fn session(&self, model: &[u8]) -> Result<Session> {
        let mut builder = Session::builder(&self.env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(ort::Error::<()>::from)?
            .with_intra_threads(self.intra_threads)
            .map_err(ort::Error::<()>::from)?
            .with_intra_op_spinning(false)
            .map_err(ort::Error::<()>::from)?
            .with_inter_op_spinning(false)
            .map_err(ort::Error::<()>::from)?
            // Pool threads (intra_threads > 1); the calling thread: `subnormals`.
            .with_flush_to_zero()
            .map_err(ort::Error::<()>::from)?;
        if self.provider == ExecutionProvider::Cuda {
            builder = with_cuda(builder)?;
        }
        builder.commit_from_memory(model).context("ONNX Runtime refused a lossgate graph")
    }
}

#[cfg(feature = "cuda")]
fn with_cuda(
    builder: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder> {
    use ort::ep::ExecutionProvider as _;
    if !ort::ep::CUDA::is_available().unwrap_or(false) {
        bail!(
            "this ONNX Runtime library has no CUDA provider: use the onnxruntime-gpu 1.31.1 build \
             (libonnxruntime.so with libonnxruntime_providers_cuda.so and libonnxruntime_providers_shared.so beside it)"
        );
    }
    builder
        .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
        .map_err(|e| anyhow::anyhow!("registering the CUDA execution provider: {e} (is libcudart/libcublas 13 and cuDNN on LD_LIBRARY_PATH?)"))
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(
    _builder: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder> {
    bail!("this lossgate binary was built without the `cuda` cargo feature: rebuild with `--features cuda`")
}
