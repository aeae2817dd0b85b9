//! Test support, shared by the integration tests and `benches/pipeline.rs`: a real
//! Kafka-compatible broker, tansu
//! from the setup cache, on a free loopback port, with in-memory storage; killed when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The test broker (`LOSSGATE_TANSU`, else the setup's prebuilt tansu later than 0.6.0).
fn tansu_binary() -> PathBuf {
    std::env::var_os("LOSSGATE_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| lossgate::shadow::runtime::cache_dir().join("bin").join("tansu"))
}

/// tansu 0.6.0 with sqlite storage (`LOSSGATE_TANSU_SQLITE`, else the setup's): the one with
/// storage that survives a restart, and the one that skips records after a seek into a batch.
fn tansu_060_binary() -> PathBuf {
    std::env::var_os("LOSSGATE_TANSU_SQLITE")
        .map(PathBuf::from)
        .unwrap_or_else(|| lossgate::shadow::runtime::cache_dir().join("bin").join("tansu-sqlite"))
}

pub struct Tansu {
    child: Child,
    pub port: u16,
}

impl Tansu {
    /// In-memory storage on a free port.
    pub fn start() -> Self {
        Self::start_with(tansu_binary(), free_port(), "memory://tansu/", None)
    }

    /// tansu 0.6.0, in-memory: it answers a fetch that starts inside a record batch with the
    /// next batch (the gap tests).
    pub fn start_060() -> Self {
        Self::start_with(tansu_060_binary(), free_port(), "memory://tansu/", None)
    }

    /// sqlite storage that survives a broker kill: `start_sqlite(file, port)` again on the same
    /// file and port is the same broker restarted.
    pub fn start_sqlite(file: &std::path::Path, port: u16) -> Self {
        // tansu takes the path after sqlite:// relative to its working directory.
        let name = file.file_name().expect("a file name").to_string_lossy();
        Self::start_with(tansu_060_binary(), port, &format!("sqlite://{name}"), file.parent())
    }

    fn start_with(binary: PathBuf, port: u16, storage: &str, workdir: Option<&std::path::Path>) -> Self {
        assert!(
            binary.exists(),
            "tansu not found at {}: run `LOSSGATE_NEED_TANSU=1 scripts/setup.sh` (make test does)",
            binary.display()
        );
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(&binary);
        if let Some(dir) = workdir {
            command.current_dir(dir);
        }
        let child = command
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                storage,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(tansu_binary())
            .args(["topic", "create", "--broker", &format!("tcp://127.0.0.1:{}", self.port), "--partitions"])
            .arg(partitions.to_string())
            .arg(name)
            .stdout(Stdio::null())
            .status()
            .expect("running tansu topic create");
        assert!(status.success(), "creating topic {name}");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        // SIGKILL, as the project design notes (../shared/DESIGN.md, beside the clone) advise for tansu.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
