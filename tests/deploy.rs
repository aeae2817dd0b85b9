//! The deployment files: they parse, promtool accepts the Prometheus files, and every metric
//! the dashboard and the alert rules name is exported by a running daemon.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::broker::Tansu;
use common::firewall::{http_get, produce, scrape, setup, wait_for_metric, Firewall};

fn deploy(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `lossgate_*` metric families named in a text, with histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("lossgate_") {
        let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name, |n, s| n.strip_suffix(s).map(str::to_string).unwrap_or(n));
        names.insert(name);
    }
    names
}

#[test]
fn kubernetes_prometheus_and_grafana_files_parse() {
    let k8s = read("kubernetes/lossgate-sidecar.yaml");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&k8s)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2, "a ConfigMap and a Deployment");
    // The ConfigMap's config is a valid lossgate config (paths aside; the secret comes from
    // the pod's environment).
    std::env::set_var("LOSSGATE_SASL_PASSWORD", "from-the-secret");
    let config = docs[0]["data"]["lossgate.toml"].as_str().unwrap().replace("file = ", "# file = ");
    lossgate::config::Config::from_toml(&config, Path::new(".")).unwrap();
    let sidecar = &docs[1]["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"), "native sidecar");
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert!(sidecar[probe]["httpGet"]["path"].is_string(), "{probe}");
    }
    assert_eq!(docs[1]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    for file in ["prometheus/prometheus.yml", "prometheus/lossgate-alerts.yml"] {
        serde_yaml::from_str::<serde_yaml::Value>(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    serde_json::from_str::<serde_json::Value>(&read("grafana/lossgate-dashboard.json")).unwrap();
}

use serde::Deserialize as _;

#[test]
fn promtool_accepts_the_rules_and_the_scrape_config() {
    for (what, file) in [("rules", "prometheus/lossgate-alerts.yml"), ("config", "prometheus/prometheus.yml")]
    {
        let out = Command::new("promtool")
            .args(["check", what])
            .arg(deploy(file))
            .output()
            .expect("promtool (Debian package prometheus) must be installed: make test installs it");
        assert!(
            out.status.success(),
            "promtool check {what} {file}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every alert fires on a series that should wake someone and stays quiet on a healthy one.
#[test]
fn promtool_unit_tests_of_every_alert_pass() {
    let rules: serde_yaml::Value = serde_yaml::from_str(&read("prometheus/lossgate-alerts.yml")).unwrap();
    let tests = read("prometheus/lossgate-alerts.test.yml");
    let alerts: Vec<String> = rules["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect();
    assert!(alerts.len() >= 7, "{alerts:?}");
    for alert in &alerts {
        let cases = tests.matches(&format!("alertname: {alert}\n")).count();
        assert!(
            cases >= 2,
            "{alert} needs a firing and a quiet case in lossgate-alerts.test.yml ({cases} found)"
        );
    }
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(deploy("prometheus/lossgate-alerts.test.yml"))
        .output()
        .expect("promtool (Debian package prometheus) must be installed: make test installs it");
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_name_is_exported() {
    let mut wanted = metric_names(&read("grafana/lossgate-dashboard.json"));
    wanted.extend(metric_names(&read("prometheus/lossgate-alerts.yml")));
    assert!(wanted.len() >= 12, "{wanted:?}");

    let broker = Tansu::start();
    let s = setup(&broker, "deploy", "exactly-once", "alpha = 0.1");
    let _firewall = Firewall::start(&s.config_path);
    let n = produce(&s.brokers, &s.topic("samples"), 0, 250, 2).await;
    assert!(wait_for_metric(s.metrics_port, "lossgate_records_in_total", n as f64, Duration::from_secs(120)));
    let exported: BTreeSet<String> = scrape(s.metrics_port)
        .unwrap()
        .keys()
        .map(|k| k.split('{').next().unwrap().to_string())
        .flat_map(|k| metric_names(&k))
        .collect();
    let missing: Vec<_> = wanted.difference(&exported).collect();
    assert!(missing.is_empty(), "named in deploy/ but not exported: {missing:?}");
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Debian's Prometheus server scrapes a running daemon with the shipped alert rules: every
/// query of the Grafana dashboard returns data, every alert rule evaluates without error, and
/// every series an alert names exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_every_dashboard_query_and_alert_against_a_running_daemon() {
    let broker = Tansu::start();
    let s = setup(&broker, "prom", "exactly-once", "alpha = 0.1");
    let _firewall = Firewall::start(&s.config_path);
    let n = produce(&s.brokers, &s.topic("samples"), 0, 250, 2).await;
    assert!(wait_for_metric(s.metrics_port, "lossgate_records_in_total", n as f64, Duration::from_secs(120)));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: lossgate\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n        labels: {{pod: test}}\n",
            deploy("prometheus/lossgate-alerts.yml").display(),
            s.metrics_port
        ),
    )
    .unwrap();
    let port = common::broker::free_port();
    let mut server = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus (Debian package prometheus) must be installed: make test installs it");
    // A few scrapes, with records flowing between them so that rates are not all zero.
    std::thread::sleep(Duration::from_secs(4));
    produce(&s.brokers, &s.topic("samples"), 250, 500, 0).await;
    std::thread::sleep(Duration::from_secs(6));

    let query = |expr: &str| -> serde_json::Value {
        let (_, body) = http_get(port, &format!("/api/v1/query?query={}", url_encode(expr)))
            .unwrap_or_else(|| panic!("Prometheus did not answer for {expr}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{expr}: {e}: {body}"))
    };
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/lossgate-dashboard.json")).unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else { continue };
            let answer = query(expr);
            assert_eq!(answer["status"], "success", "{expr}: {answer}");
            assert!(
                !answer["data"]["result"].as_array().unwrap().is_empty(),
                "the dashboard query {expr} returned no data"
            );
            queries += 1;
        }
    }
    assert!(queries >= 12, "{queries} dashboard queries");

    let rules: serde_json::Value = serde_json::from_str(&http_get(port, "/api/v1/rules").unwrap().1).unwrap();
    let mut alerts = 0;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(
                rule["health"], "ok",
                "alert {} does not evaluate: {}",
                rule["name"], rule["lastError"]
            );
            for name in metric_names(rule["query"].as_str().unwrap()) {
                let answer = query(&name);
                assert!(
                    !answer["data"]["result"].as_array().unwrap().is_empty(),
                    "alert {} names {name}, which has no series",
                    rule["name"]
                );
            }
            alerts += 1;
        }
    }
    assert!(alerts >= 7, "{alerts} alert rules loaded");
    let _ = server.kill();
    let _ = server.wait();
}
