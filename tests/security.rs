//! Kafka TLS and SASL settings pass through to librdkafka, secrets come from the environment or
//! files, and no secret reaches the logs, the errors or the metrics.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::broker::Tansu;
use common::firewall::{http_status, scrape, setup, Firewall};
use lossgate::kafka::KafkaConfig;
use rdkafka::consumer::BaseConsumer;

const PASSWORD: &str = "s3cret-sasl-password-7f1c";
const KEY_PASSWORD: &str = "s3cret-key-password-90ab";

fn kafka_with(properties: &[(&str, &str)]) -> KafkaConfig {
    let properties: BTreeMap<String, String> =
        properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    KafkaConfig { brokers: "127.0.0.1:1".into(), properties, ..Default::default() }
}

#[test]
fn sasl_settings_reach_librdkafka_with_the_secret_read_from_the_environment() {
    std::env::set_var("LOSSGATE_TEST_SASL_PASSWORD", PASSWORD);
    let kafka = kafka_with(&[
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "PLAIN"),
        ("sasl.username", "lossgate"),
        ("sasl.password", "env:LOSSGATE_TEST_SASL_PASSWORD"),
    ]);
    let client = kafka.client_config().unwrap();
    assert_eq!(client.get("security.protocol"), Some("SASL_PLAINTEXT"));
    assert_eq!(client.get("sasl.mechanism"), Some("PLAIN"));
    assert_eq!(client.get("sasl.password"), Some(PASSWORD));
    // librdkafka itself accepts the settings (it refuses unknown or unsupported ones).
    client.create::<BaseConsumer>().expect("librdkafka accepts SASL_PLAINTEXT / PLAIN");
    let printed = format!("{kafka:?}");
    assert!(!printed.contains(PASSWORD) && printed.contains("sasl.username"), "{printed}");
}

#[test]
fn tls_settings_reach_librdkafka_with_the_key_password_read_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("key-password");
    std::fs::write(&secret_file, format!("{KEY_PASSWORD}\n")).unwrap();
    let kafka = kafka_with(&[
        ("security.protocol", "SSL"),
        ("ssl.ca.location", "/etc/ssl/certs/ca-certificates.crt"),
        ("ssl.key.password", &format!("file:{}", secret_file.display())),
    ]);
    let client = kafka.client_config().unwrap();
    assert_eq!(client.get("security.protocol"), Some("SSL"));
    assert_eq!(client.get("ssl.key.password"), Some(KEY_PASSWORD), "read from the file, newline trimmed");
    // librdkafka sets the properties in no fixed order, and whichever it refuses first is
    // quoted in its error with its value: try often enough to meet the key password first.
    for _ in 0..20 {
        let created = lossgate::kafka::create_client::<BaseConsumer>(&client, "a test consumer");
        if cfg!(feature = "ssl") {
            created.expect("a build with the ssl feature accepts TLS settings");
        } else {
            // The default build has no OpenSSL: librdkafka says so by name, and the error
            // carries no secret.
            let Err(error) = created else { panic!("this build has no TLS support") };
            let error = format!("{error:#}");
            assert!(error.contains("OpenSSL not available"), "{error}");
            assert!(!error.contains(KEY_PASSWORD), "{error}");
        }
    }
    // The raw librdkafka error quotes the refused property's value; the redacted one does not.
    let raw = rdkafka::error::KafkaError::ClientConfig(
        rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
        "not supported in this build".into(),
        "ssl.key.password".into(),
        KEY_PASSWORD.into(),
    );
    assert!(raw.to_string().contains(KEY_PASSWORD));
    let redacted = lossgate::kafka::redacted_error(&client, &raw);
    assert!(!redacted.contains(KEY_PASSWORD) && redacted.contains("<redacted>"), "{redacted}");
    assert!(!format!("{kafka:?}").contains(KEY_PASSWORD));
}

#[test]
fn a_missing_secret_stops_start_up_naming_the_property_and_not_the_value() {
    let kafka = kafka_with(&[("sasl.password", "env:LOSSGATE_TEST_NOT_SET_ANYWHERE")]);
    let error = format!("{:#}", kafka.client_config().expect_err("the variable is not set"));
    assert!(
        error.contains("kafka.properties.sasl.password") && error.contains("LOSSGATE_TEST_NOT_SET_ANYWHERE")
    );
}

/// The daemon with SASL settings against tansu (which refuses the PLAIN handshake): the
/// password appears in no log line (librdkafka's security debug log included), no metric and
/// no health report.
#[test]
fn the_daemon_never_logs_or_exports_the_sasl_password() {
    let broker = Tansu::start();
    let setup = setup(&broker, "secure", "at-least-once", "alpha = 0.1");
    let mut config = std::fs::read_to_string(&setup.config_path).unwrap();
    config.push_str(
        "\n[kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"PLAIN\"\n\
         \"sasl.username\" = \"lossgate\"\n\"sasl.password\" = \"env:LOSSGATE_SASL_PASSWORD\"\n\"debug\" = \"security,broker\"\n",
    );
    assert!(
        config.matches("[kafka.properties]").count() == 1,
        "the test config has no such section of its own"
    );
    std::fs::write(&setup.config_path, config).unwrap();
    std::env::set_var("LOSSGATE_SASL_PASSWORD", PASSWORD);
    let mut firewall = Firewall::start_logging(&setup.config_path, "debug,librdkafka=debug");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut exported = String::new();
    while Instant::now() < deadline {
        if let Some(metrics) = scrape(setup.metrics_port) {
            exported = format!("{metrics:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(http_status(setup.metrics_port, "/healthz"), Some(200), "the daemon is up");
    // tansu offers PLAIN but has no users configured: authentication fails, and the
    // daemon says it is not ready rather than pretending.
    assert_eq!(http_status(setup.metrics_port, "/readyz"), Some(503));
    firewall.terminate();
    let log = std::fs::read_to_string(setup.config_path.with_extension("log")).unwrap();
    assert!(log.contains("SASL") || log.contains("sasl"), "librdkafka's security debug log ran:\n{log}");
    assert!(!log.contains(PASSWORD), "the password leaked into the log");
    assert!(!exported.is_empty() && !exported.contains(PASSWORD));
}
