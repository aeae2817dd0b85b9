//! Prometheus metrics, named once here, and the config of the HTTP endpoint that serves them.

use std::net::SocketAddr;

use prometheus::{
    exponential_buckets, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry,
};
use serde::Deserialize;

use crate::validation::ConfigError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served. Loopback by default: expose it
    /// deliberately.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9464".parse().expect("valid address") }
    }
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Every metric lossgate exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub records_in: IntCounter,
    pub forwarded: IntCounter,
    pub quarantined: IntCounter,
    pub quarantined_by_label: IntCounterVec,
    pub flagged_observed: IntCounter,
    pub dead_lettered: IntCounterVec,
    pub skipped_already_produced: IntCounter,
    pub redelivered: IntCounter,
    pub input_gaps: IntCounterVec,
    pub partitions_stopped: IntGauge,
    pub score: Histogram,
    pub threshold: Gauge,
    pub window_size: IntGauge,
    pub windows: IntCounterVec,
    pub window_seconds: Histogram,
    pub training_seconds: Histogram,
    pub consumer_lag: IntGauge,
    pub transactions: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub build_info: GaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
    registry.register(Box::new(h.clone())).expect("metric registered once");
    h
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let threshold =
            Gauge::new("lossgate_threshold", "Anomaly-score threshold of the last window").unwrap();
        r.register(Box::new(threshold.clone())).unwrap();
        let window_size = IntGauge::new("lossgate_window_size", "Records in the last window").unwrap();
        r.register(Box::new(window_size.clone())).unwrap();
        let consumer_lag = IntGauge::new(
            "lossgate_consumer_lag",
            "Records in the input topic not yet read, summed over assigned partitions",
        )
        .unwrap();
        r.register(Box::new(consumer_lag.clone())).unwrap();
        let partitions_stopped = IntGauge::new(
            "lossgate_partitions_stopped",
            "Input partitions stopped at a gap the broker left (nothing past it is committed)",
        )
        .unwrap();
        r.register(Box::new(partitions_stopped.clone())).unwrap();
        let build_info =
            GaugeVec::new(Opts::new("lossgate_build_info", "Build information"), &["version"]).unwrap();
        r.register(Box::new(build_info.clone())).unwrap();
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1.0);
        Self {
            records_in: counter(&r, "lossgate_records_in_total", "Input records read"),
            forwarded: counter(
                &r,
                "lossgate_records_forwarded_total",
                "Records forwarded to the output topic",
            ),
            quarantined: counter(
                &r,
                "lossgate_records_quarantined_total",
                "Records sent to the quarantine topic",
            ),
            quarantined_by_label: counter_vec(
                &r,
                "lossgate_records_quarantined_by_label_total",
                "Quarantined records by their label",
                &["label"],
            ),
            flagged_observed: counter(
                &r,
                "lossgate_records_flagged_observed_total",
                "Records above the threshold but forwarded because observe mode is on",
            ),
            dead_lettered: counter_vec(
                &r,
                "lossgate_records_dead_lettered_total",
                "Records sent to the dead-letter topic, by reason",
                &["reason"],
            ),
            skipped_already_produced: counter(
                &r,
                "lossgate_records_skipped_already_produced_total",
                "Re-read input records skipped because recovery found them already produced",
            ),
            redelivered: counter(
                &r,
                "lossgate_records_redelivered_total",
                "Input records the broker delivered again below the read position; ignored",
            ),
            input_gaps: counter_vec(
                &r,
                "lossgate_input_gaps_total",
                "Jumps in the input offsets past records never delivered, by what was done: explained (no record there), skipped (gap_policy skip), stopped (partition stopped)",
                &["result"],
            ),
            partitions_stopped,
            score: histogram(
                &r,
                "lossgate_anomaly_score",
                "Anomaly score of every decided record",
                exponential_buckets(0.05, 1.5, 16).unwrap(),
            ),
            threshold,
            window_size,
            windows: counter_vec(&r, "lossgate_windows_total", "Windows ended, by result", &["result"]),
            window_seconds: histogram(
                &r,
                "lossgate_window_duration_seconds",
                "From a window's close to its outputs acknowledged and offsets committed",
                exponential_buckets(0.05, 2.0, 14).unwrap(),
            ),
            training_seconds: histogram(
                &r,
                "lossgate_shadow_training_seconds",
                "Shadow training and scoring time per window",
                exponential_buckets(0.05, 2.0, 14).unwrap(),
            ),
            consumer_lag,
            transactions: counter_vec(
                &r,
                "lossgate_transactions_total",
                "Kafka transactions, by result",
                &["result"],
            ),
            config_reloads: counter_vec(
                &r,
                "lossgate_config_reloads_total",
                "Config reloads, by result",
                &["result"],
            ),
            build_info,
            registry: r,
        }
    }

    /// Creates every labelled series a dashboard or alert rule may name, at zero, so that
    /// they exist before their first event.
    pub fn preset_labels(&self, classes: usize) {
        for result in ["committed", "aborted"] {
            self.windows.with_label_values(&[result]);
            self.transactions.with_label_values(&[result]);
        }
        for result in ["applied", "unchanged", "invalid", "refused"] {
            self.config_reloads.with_label_values(&[result]);
        }
        for reason in crate::codec::Rejection::CODES {
            self.dead_lettered.with_label_values(&[reason]);
        }
        for result in ["explained", "skipped", "stopped"] {
            self.input_gaps.with_label_values(&[result]);
        }
        for label in 0..classes {
            self.quarantined_by_label.with_label_values(&[&label.to_string()]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out).expect("text encoding");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
