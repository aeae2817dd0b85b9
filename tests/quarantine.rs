//! `lossgate quarantine list`, `show` and `release` against tansu: the records the daemon
//! quarantined are listed with their decision and shown with their trajectory; released records reach the output topic once each, byte for
//! byte plus the release headers, however often and however interrupted the release is.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::Duration;

use common::broker::Tansu;
use common::firewall::{produce, read_outputs, setup, wait_for_metric, Firewall, OutputRecord, Setup};

fn lossgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lossgate"));
    command.args(args).env("NO_COLOR", "1");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("running lossgate")
}

fn released(s: &Setup, expected: usize) -> Vec<OutputRecord> {
    read_outputs(s, 60 + expected, Duration::from_secs(20))
        .into_iter()
        .filter(|r| r.topic == s.topic("clean"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_records_are_listed_and_released_once_even_when_a_release_is_interrupted() {
    let broker = Tansu::start();
    let s = setup(&broker, "review", "exactly-once", "policy = \"threshold\"\nthreshold = 0.0");
    broker.create_topic(&s.topic("releases"), 1);
    let text = std::fs::read_to_string(&s.config_path).unwrap().replace(
        "checkpoint_topic =",
        &format!("release_topic = \"{}\"\ncheckpoint_topic =", s.topic("releases")),
    ) + "\n[input]\nfeatures = 784\nclasses = 10\nimage = [28, 28]\n";
    std::fs::write(&s.config_path, text).unwrap();
    let config = s.config_path.to_str().unwrap().to_string();
    let mut firewall = Firewall::start(&s.config_path);
    let n = produce(&s.brokers, &s.topic("samples"), 0, 60, 0).await;
    assert!(wait_for_metric(
        s.metrics_port,
        "lossgate_records_quarantined_total",
        n as f64,
        Duration::from_secs(120)
    ));
    assert_eq!(firewall.terminate(), Some(0));

    let listed = lossgate(&["quarantine", "list", "--config", &config, "--json"], &[]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&listed.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), n, "every quarantined record listed");
    for row in &rows {
        assert!(row["score"].as_f64().is_some() && row["threshold"].as_f64() == Some(0.0), "{row}");
        assert!(row["label"].as_i64().is_some() && row["window"].as_u64().is_some(), "{row}");
        assert!(!row["reason"].as_str().unwrap().is_empty() && row["timestamp"].as_i64().is_some(), "{row}");
    }
    let label = rows[0]["label"].as_i64().unwrap();
    let by_label =
        lossgate(&["quarantine", "list", "--config", &config, "--json", "--label", &label.to_string()], &[]);
    let count = String::from_utf8_lossy(&by_label.stdout).lines().count();
    assert_eq!(count, rows.iter().filter(|r| r["label"].as_i64() == Some(label)).count());
    // `show`: the decision, every header, the trajectory against its window's probe band.
    let record = rows[0]["record"].as_str().unwrap();
    let png = s.dir.path().join("shown.png");
    let shown = lossgate(
        &["quarantine", "show", "--config", &config, "--record", record, "--png", png.to_str().unwrap()],
        &[],
    );
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let out = String::from_utf8_lossy(&shown.stdout);
    let trajectory = out.lines().find_map(|l| l.strip_prefix("trajectory ")).expect("a trajectory line");
    let losses: Vec<f32> = trajectory.split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!(losses.len(), 4, "one loss per shadow epoch (the test config trains 4): {out}");
    assert!(losses.iter().all(|l| l.is_finite() && *l >= 0.0), "{out}");
    for header in
        ["lossgate-source", "lossgate-probe-band", "lossgate-reason", "lossgate-decision: quarantine"]
    {
        assert!(out.contains(header), "{header} missing from:\n{out}");
    }
    let bytes = std::fs::read(&png).expect("show wrote the PNG");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000, "{} bytes", bytes.len());
    let unknown = lossgate(&["quarantine", "show", "--config", &config, "--record", "nope/0/0"], &[]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no record nope/0/0"));

    let table = lossgate(&["quarantine", "list", "--config", &config], &[]);
    assert!(String::from_utf8_lossy(&table.stdout).contains(&format!("{n} quarantined records")));

    let record = |i: usize| rows[i]["record"].as_str().unwrap().to_string();
    let release = |picked: &[usize], env: &[(&str, &str)]| {
        let mut args: Vec<String> =
            ["quarantine", "release", "--config", &config, "--reason", "reviewed: clean"]
                .iter()
                .map(|a| a.to_string())
                .collect();
        for &i in picked {
            args.push("--record".into());
            args.push(record(i));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lossgate(&args, env)
    };
    let stdout = |o: &Output| String::from_utf8_lossy(&o.stdout).to_string();

    // Release five, then the same five again: written once.
    let first = release(&[0, 1, 2, 3, 4], &[]);
    assert!(
        stdout(&first).contains("released 5 records"),
        "{}{}",
        stdout(&first),
        String::from_utf8_lossy(&first.stderr)
    );
    let again = release(&[0, 1, 2, 3, 4], &[]);
    assert!(
        stdout(&again).contains("released 0 records") && stdout(&again).contains("5 were released before"),
        "{}",
        stdout(&again)
    );
    let out = released(&s, 5);
    assert_eq!(out.len(), 5, "a release asked twice is written once");
    let keys: HashMap<String, &serde_json::Value> =
        rows.iter().map(|r| (r["key"].as_str().unwrap().to_string(), r)).collect();
    for r in &out {
        let row = keys[&r.key];
        assert_eq!(r.headers["lossgate-released-from"], row["record"].as_str().unwrap());
        assert_eq!(r.headers["lossgate-release-reason"], "reviewed: clean");
        assert!(r.headers.contains_key("lossgate-released-at"));
        assert_eq!(
            r.headers["lossgate-source"],
            row["source"].as_str().unwrap(),
            "the original headers travel"
        );
    }

    // Killed after the copies were written, before the release was recorded done: the next
    // release finds the copies and writes nothing again.
    let killed = release(&[10, 11, 12], &[("LOSSGATE_RELEASE_CRASH_AT", "copies")]);
    assert!(!killed.status.success(), "the release was killed");
    let after = release(&[10, 11, 12], &[]);
    assert!(
        stdout(&after).contains("released 0 records") && stdout(&after).contains("3 were released before"),
        "{}{}",
        stdout(&after),
        String::from_utf8_lossy(&after.stderr)
    );
    assert_eq!(released(&s, 8).len(), 8);

    // Killed after recording its intent, before any copy: the next release writes them.
    let killed = release(&[20, 21], &[("LOSSGATE_RELEASE_CRASH_AT", "intents")]);
    assert!(!killed.status.success());
    assert_eq!(released(&s, 8).len(), 8, "nothing written by the killed release");
    let after = release(&[20, 21], &[]);
    assert!(stdout(&after).contains("released 2 records"), "{}", stdout(&after));
    let out = released(&s, 10);
    assert_eq!(out.len(), 10, "each released record once");
    assert_eq!(common::firewall::duplicates(&out), 0);

    let nothing = lossgate(&["quarantine", "release", "--config", &config, "--reason", "x"], &[]);
    assert!(!nothing.status.success(), "a release that names nothing is refused");
}
