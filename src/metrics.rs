//! Prometheus metrics, named once here, and the config of the HTTP endpoint that serves them.

use std::net::SocketAddr;

use prometheus::{
    exponential_buckets, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry,
};
use serde::Deserialize;

/// Declares the values of one metric label: each named once, here, and typed at the call site.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl Label for $name {
            const ALL: &'static [Self] = &[$(Self::$variant),+];
            fn label(self) -> &'static str {
                match self { $(Self::$variant => $label),+ }
            }
        }
    };
}

/// A closed set of label values.
pub trait Label: Copy + 'static {
    const ALL: &'static [Self];
    fn label(self) -> &'static str;
}

label_values! {
    /// How a window or a transaction ended (`result`).
    Ended { Committed => "committed", Aborted => "aborted" }
}

label_values! {
    /// What a config reload did (`result`).
    Reload { Applied => "applied", Unchanged => "unchanged", Invalid => "invalid", Refused => "refused" }
}

label_values! {
    /// What was done about a jump in the input offsets (`result`).
    Gap { Explained => "explained", Skipped => "skipped", Stopped => "stopped" }
}

/// A counter with one label whose values are the variants of `L`, all created at zero.
#[derive(Clone)]
pub struct LabelledCounter<L> {
    inner: IntCounterVec,
    label: std::marker::PhantomData<L>,
}

impl<L: Label> LabelledCounter<L> {
    fn register(registry: &Registry, name: &str, help: &str) -> Self {
        let inner = counter_vec(registry, name, help, &["result"]);
        for value in L::ALL {
            inner.with_label_values(&[value.label()]);
        }
        Self { inner, label: std::marker::PhantomData }
    }

    pub fn inc(&self, value: L) {
        self.inc_by(value, 1);
    }

    pub fn inc_by(&self, value: L, n: u64) {
        self.inner.with_label_values(&[value.label()]).inc_by(n);
    }

    pub fn get(&self, value: L) -> u64 {
        self.inner.with_label_values(&[value.label()]).get()
    }
}

/// Nothing to validate beyond what its type says: any address that parses can be bound (port 0
/// included: a free one, logged at start-up).
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

/// Every metric lossgate exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub records_in: IntCounter,
    pub forwarded: IntCounter,
    pub quarantined: IntCounter,
    pub quarantined_by_label: IntCounterVec,
    pub flagged_observed: IntCounter,
    pub kept_hard_clean: IntCounter,
    pub out_of_range: IntCounter,
    pub window_out_of_range_share: Gauge,
    pub probes_above_threshold: GaugeVec,
    pub dead_lettered: IntCounterVec,
    pub skipped_already_produced: IntCounter,
    pub redelivered: IntCounter,
    pub input_gaps: LabelledCounter<Gap>,
    pub partitions_stopped: IntGauge,
    pub score: Histogram,
    pub threshold: Gauge,
    pub shadow_learning_rate: Gauge,
    pub shadow_first_epoch_pace: Gauge,
    pub windows_rate_rechosen: IntCounter,
    pub window_size: IntGauge,
    pub windows: LabelledCounter<Ended>,
    pub window_seconds: Histogram,
    pub training_seconds: Histogram,
    pub consumer_lag: IntGauge,
    pub transactions: LabelledCounter<Ended>,
    pub config_reloads: LabelledCounter<Reload>,
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
        let shadow_learning_rate = Gauge::new(
            "lossgate_shadow_learning_rate",
            "Learning rate of the last window's shadow (chosen on the first window under auto)",
        )
        .unwrap();
        r.register(Box::new(shadow_learning_rate.clone())).unwrap();
        let shadow_first_epoch_pace = Gauge::new(
            "lossgate_shadow_first_epoch_pace",
            "The last window's probes' mean loss after one shadow epoch as a share of chance, at the \
             chosen learning rate; outside 1/3-5/6 the rate is chosen again for that window \
             (shadow.recheck_rate)",
        )
        .unwrap();
        r.register(Box::new(shadow_first_epoch_pace.clone())).unwrap();
        let window_out_of_range_share = Gauge::new(
            "lossgate_window_out_of_range_share",
            "Share of the last window's records outside the probes' input range (scorer.input_range); \
             over 0.2 the engine warns that the probes are probably stale",
        )
        .unwrap();
        r.register(Box::new(window_out_of_range_share.clone())).unwrap();
        let probes_above_threshold = GaugeVec::new(
            Opts::new(
                "lossgate_probes_above_threshold_share",
                "Share of the clean probes of each class scoring above the last window's threshold: \
                 the clean data of that class the threshold takes before hard clean data is kept; \
                 a class far above decision.alpha pays more of the false-reject budget than the \
                 others (its clean data varies more, or its probes are few); NaN for a class no \
                 window has measured (no probe carries it)",
            ),
            &["label"],
        )
        .unwrap();
        r.register(Box::new(probes_above_threshold.clone())).unwrap();
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
            kept_hard_clean: counter(
                &r,
                "lossgate_records_kept_hard_clean_total",
                "Records above the threshold forwarded as hard clean data (decision.keep_hard_clean)",
            ),
            out_of_range: counter(
                &r,
                "lossgate_records_out_of_range_total",
                "Records outside the probes' input range, quarantined by scorer.input_range",
            ),
            window_out_of_range_share,
            probes_above_threshold,
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
            input_gaps: LabelledCounter::register(
                &r,
                "lossgate_input_gaps_total",
                "Jumps in the input offsets past records never delivered, by what was done: explained (no record there), skipped (gap_policy skip), stopped (partition stopped)",
            ),
            partitions_stopped,
            score: histogram(
                &r,
                "lossgate_anomaly_score",
                "Anomaly score of every decided record",
                exponential_buckets(0.05, 1.5, 16).unwrap(),
            ),
            threshold,
            shadow_learning_rate,
            shadow_first_epoch_pace,
            windows_rate_rechosen: counter(
                &r,
                "lossgate_windows_rate_rechosen_total",
                "Windows whose shadow learned outside the pace band at the chosen learning rate and \
                 got a rate chosen again on themselves (the stream drifted)",
            ),
            window_size,
            windows: LabelledCounter::register(&r, "lossgate_windows_total", "Windows ended, by result"),
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
            transactions: LabelledCounter::register(
                &r,
                "lossgate_transactions_total",
                "Kafka transactions, by result",
            ),
            config_reloads: LabelledCounter::register(
                &r,
                "lossgate_config_reloads_total",
                "Config reloads, by result",
            ),
            registry: r,
        }
    }

    /// Creates the labelled series whose values depend on the data (dead-letter reasons, class
    /// labels) at zero, so that a dashboard or alert rule finds them before their first event;
    /// those with a closed set of values are created with their counter.
    pub fn preset_labels(&self, classes: usize) {
        for reason in crate::codec::Rejection::CODES {
            self.dead_lettered.with_label_values(&[reason]);
        }
        for label in 0..classes {
            self.quarantined_by_label.with_label_values(&[&label.to_string()]);
            // Not a measurement until a window has one; a class no probe carries stays so.
            self.probes_above_threshold.with_label_values(&[&label.to_string()]).set(f64::NAN);
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
