//! Routing and producing: every record of a decided window gets exactly one destination, is
//! written there with lossgate's headers, and is acknowledged before anything is committed.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, Result};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::window::InputRecord;
use crate::codec::Rejection;
use crate::decision::Action;
use crate::engine::WindowOutcome;
use crate::kafka::position::TopicPosition;
use crate::kafka::Destination;
use crate::kafka::{headers, KafkaConfig};

/// One record of a decided window, ready to produce.
pub(super) struct Routed<'a> {
    pub record: &'a InputRecord,
    pub destination: Destination,
    pub headers: OwnedHeaders,
    /// The dead-letter code, for the metrics.
    pub rejection: Option<&'static str>,
    /// Written without its value (and without its forwarded headers): it was too large.
    pub value_dropped: bool,
}

fn base_headers(record: &InputRecord, input_topic: &str) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(record.headers.len() + 6);
    for (key, value) in &record.headers {
        h = headers::add_raw(h, key, value.as_deref());
    }
    with_source(h, record, input_topic)
}

fn with_source(h: OwnedHeaders, record: &InputRecord, input_topic: &str) -> OwnedHeaders {
    h.insert(Header {
        key: headers::SOURCE,
        value: Some(&TopicPosition::new(input_topic, record.partition, record.offset).to_string()),
    })
}

/// A dead-letter copy without the value (and without the forwarded headers, which may be what
/// made it too large): its size and source say what it was.
fn oversized<'a>(record: &'a InputRecord, kafka: &KafkaConfig, why: &str) -> Routed<'a> {
    let size = record.value.as_ref().map_or(0, Vec::len);
    let h = with_source(OwnedHeaders::new_with_capacity(4), record, &kafka.input_topic)
        .insert(Header { key: headers::DECISION, value: Some("dead-letter") })
        .insert(Header { key: headers::REASON, value: Some(&format!("too_large: {why}")) })
        .insert(Header { key: headers::ORIGINAL_SIZE, value: Some(&size.to_string()) });
    Routed {
        record,
        destination: Destination::DeadLetter,
        headers: h,
        rejection: Some("too_large"),
        value_dropped: true,
    }
}

/// Where each record goes: undecodable ones to the dead-letter topic with their reason,
/// decided ones as the engine said, records recovery found already produced nowhere.
pub(super) fn route<'a>(
    kafka: &KafkaConfig,
    records: &'a [InputRecord],
    decided: &[usize],
    outcome: Option<&WindowOutcome>,
    window_id: u64,
) -> Vec<Routed<'a>> {
    let decisions: HashMap<usize, usize> = decided.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    let window = window_id.to_string();
    // The probe band of each label under each shadow that judged (the first of two judges
    // its suspects), computed once per window for its quarantined records.
    let mut bands: HashMap<(i64, bool), String> = HashMap::new();
    let mut routed = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        if record.already_produced {
            continue;
        }
        if let Err(rejection @ Rejection::TooLarge { .. }) = &record.sample {
            routed.push(oversized(record, kafka, &rejection.to_string()));
            continue;
        }
        let h = base_headers(record, &kafka.input_topic);
        let (destination, h, rejection) = match (&record.sample, decisions.get(&i)) {
            (Err(rejection), _) => (
                Destination::DeadLetter,
                h.insert(Header { key: headers::DECISION, value: Some("dead-letter") }).insert(Header {
                    key: headers::REASON,
                    value: Some(&format!("{}: {rejection}", rejection.code())),
                }),
                Some(rejection.code()),
            ),
            (Ok(sample), Some(&k)) => {
                let outcome = outcome.expect("decided records have an outcome");
                let d = &outcome.decisions[k];
                let h = h
                    .insert(Header { key: headers::SCORE, value: Some(&d.score.to_string()) })
                    .insert(Header { key: headers::THRESHOLD, value: Some(&d.threshold.to_string()) })
                    .insert(Header { key: headers::WINDOW, value: Some(&window) });
                match d.action {
                    Action::Quarantine => {
                        // What `lossgate quarantine show` draws: this record's trajectory
                        // against its window's clean band.
                        let band = bands
                            .entry((sample.label, outcome.judged_by_first_pass(k)))
                            .or_insert_with(|| headers::encode_band(&outcome.probe_band(k)));
                        let trajectory = headers::encode_trajectory(&outcome.trajectory(k));
                        (
                            Destination::Quarantine,
                            h.insert(Header { key: headers::DECISION, value: Some("quarantine") })
                                .insert(Header { key: headers::REASON, value: Some(&d.reason) })
                                .insert(Header { key: headers::TRAJECTORY, value: Some(&trajectory) })
                                .insert(Header { key: headers::PROBE_BAND, value: Some(band.as_str()) }),
                            None,
                        )
                    }
                    // Above the threshold yet forwarded: the headers say why, so that a reader
                    // comparing score and threshold is not left guessing.
                    Action::Forward if d.kept_hard_clean => (
                        Destination::Forward,
                        h.insert(Header { key: headers::DECISION, value: Some(headers::KEPT_HARD_CLEAN) })
                            .insert(Header { key: headers::REASON, value: Some(&d.reason) }),
                        None,
                    ),
                    Action::Forward => (
                        Destination::Forward,
                        h.insert(Header {
                            key: headers::DECISION,
                            value: Some(if d.flagged { "flagged" } else { "forward" }),
                        }),
                        None,
                    ),
                }
            }
            // Only in passthrough mode (the benchmark baseline): forward undecided.
            (Ok(_), None) => (
                Destination::Forward,
                h.insert(Header { key: headers::DECISION, value: Some("forward") }),
                None,
            ),
        };
        routed.push(Routed { record, destination, headers: h, rejection, value_dropped: false });
    }
    routed
}

/// Sends every record and waits for every acknowledgement; any failure fails the window,
/// except a record refused as too large. The broker refuses a whole batch, so each refused
/// record is first sent again on its own; only a record refused alone is written to the
/// dead-letter topic without its value (else it would fail every retry and its partition
/// would never move again).
pub(super) async fn produce_all(
    producer: &FutureProducer,
    kafka: &KafkaConfig,
    routed: &mut [Routed<'_>],
) -> Result<Vec<TopicPosition>> {
    let mut pending = Vec::with_capacity(routed.len());
    for (i, r) in routed.iter().enumerate() {
        pending.push((i, send(producer, kafka, r).await));
    }
    let mut delivered = Vec::with_capacity(pending.len());
    let mut refused = Vec::new();
    for (i, queued) in pending {
        let topic = routed[i].destination.topic(kafka);
        let outcome = match queued {
            Ok(future) => {
                future.await.map_err(|_| anyhow!("delivery to {topic} was cancelled"))?.map_err(|(e, _)| e)
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(d) => delivered.push(TopicPosition::new(topic, d.partition, d.offset)),
            Err(e) if is_too_large(&e) => refused.push(i),
            Err(e) => return Err(anyhow!("delivery to {topic} failed: {e}")),
        }
    }
    for i in refused {
        delivered.push(send_alone(producer, kafka, routed, i).await?);
    }
    Ok(delivered)
}

/// Sends `routed[i]` with nothing else in flight (a batch of one); if it is refused as too
/// large again, it is the record itself: its value-less dead-letter copy goes instead.
async fn send_alone(
    producer: &FutureProducer,
    kafka: &KafkaConfig,
    routed: &mut [Routed<'_>],
    i: usize,
) -> Result<TopicPosition> {
    for _ in 0..2 {
        let topic = routed[i].destination.topic(kafka).to_string();
        let outcome = match send(producer, kafka, &routed[i]).await {
            Ok(future) => {
                future.await.map_err(|_| anyhow!("delivery to {topic} was cancelled"))?.map_err(|(e, _)| e)
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(d) => return Ok(TopicPosition::new(topic, d.partition, d.offset)),
            Err(e) if is_too_large(&e) && !routed[i].value_dropped => {
                let record = routed[i].record;
                routed[i] =
                    oversized(record, kafka, &format!("refused by Kafka when writing to {topic}: {e}"));
            }
            Err(e) => return Err(anyhow!("delivery to {topic} failed: {e}")),
        }
    }
    Err(anyhow!("the dead-letter copy of an oversized record was refused as too large too"))
}

type Delivery = rdkafka::producer::DeliveryFuture;

/// Queues one record, waiting for room in the producer's queue (back-pressure).
async fn send(
    producer: &FutureProducer,
    kafka: &KafkaConfig,
    r: &Routed<'_>,
) -> Result<Delivery, rdkafka::error::KafkaError> {
    let topic = r.destination.topic(kafka);
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(r.headers.clone());
    if let Some(key) = &r.record.key {
        record = record.key(key.as_slice());
    }
    if let (Some(value), false) = (&r.record.value, r.value_dropped) {
        record = record.payload(value.as_slice());
    }
    if let Some(ts) = r.record.timestamp {
        record = record.timestamp(ts);
    }
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((e, back)) if is_queue_full(&e) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                record = back;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

fn is_queue_full(e: &rdkafka::error::KafkaError) -> bool {
    matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::QueueFull))
}

fn is_too_large(e: &rdkafka::error::KafkaError) -> bool {
    matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::MessageSizeTooLarge))
}
