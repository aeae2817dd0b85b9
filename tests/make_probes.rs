//! `lossgate make-probes` on real MNIST: a probe file the daemon's config loads, and a draw
//! that misses a class refused by name.

mod common;

use std::process::Command;

fn make_probes(config: &std::path::Path, out: &std::path::Path, count: usize) -> std::process::Output {
    let mnist = common::mnist_dir();
    Command::new(env!("CARGO_BIN_EXE_lossgate"))
        .arg("make-probes")
        .arg("--config")
        .arg(config)
        .arg("--from")
        .arg(mnist.join("t10k-images-idx3-ubyte"))
        .arg("--labels-file")
        .arg(mnist.join("t10k-labels-idx1-ubyte"))
        .args(["--format", "idx", "--count", &count.to_string(), "--out"])
        .arg(out)
        .env("NO_COLOR", "1")
        .output()
        .expect("running lossgate make-probes")
}

#[test]
fn a_probe_file_from_mnist_loads_as_the_daemon_would_and_a_missing_class_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lossgate.toml");
    let out = dir.path().join("probes.jsonl");
    let made = make_probes(&config, &out, 250);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let stdout = String::from_utf8_lossy(&made.stdout);
    assert!(stdout.contains("wrote 250 probes") && stdout.contains("class 9:"), "{stdout}");
    let probes = lossgate::probes::ProbesConfig {
        count: 250,
        file: Some(out.clone()),
        format: lossgate::probes::ProbeFormat::Jsonl,
        ..Default::default()
    };
    assert_eq!(probes.load(784, 10, 0.1).unwrap().len(), 250);

    // Eleven classes configured, MNIST has ten: class 10 has no probe.
    let eleven = dir.path().join("eleven.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen("classes = 10", "classes = 11", 1);
    assert!(text.contains("classes = 11"), "the shipped config names input.classes");
    std::fs::write(&eleven, text).unwrap();
    let refused = make_probes(&eleven, &dir.path().join("refused.jsonl"), 250);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("class(es) [10]"), "{stderr}");
}
