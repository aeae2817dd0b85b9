//! Input records as the daemon holds them until their window is decided.

use std::time::{Duration, Instant};

use rdkafka::message::{BorrowedMessage, Message};

use crate::codec::{DecodeRules, Rejection, Sample};
use crate::kafka::headers::{self, RawHeader};
use crate::kafka::position::Position;

/// One input record, kept whole so that it can be forwarded byte for byte.
#[derive(Debug, Clone)]
pub(super) struct InputRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// As bytes, with incoming `lossgate-*` keys renamed (see [`headers::untrusted`]).
    pub headers: Vec<RawHeader>,
    pub timestamp: Option<i64>,
    pub sample: Result<Sample, Rejection>,
    /// Recovery found this record already produced by an earlier run: commit it, write nothing.
    pub already_produced: bool,
}

impl InputRecord {
    pub(super) fn position(&self) -> Position {
        Position { partition: self.partition, offset: self.offset }
    }

    pub(super) fn from_message(message: &BorrowedMessage<'_>, rules: &DecodeRules) -> Self {
        let raw = headers::read_raw(message);
        let sample = rules.decode(message.payload(), |name| {
            raw.iter().find(|(k, _)| k == name.as_bytes()).and_then(|(_, v)| v.as_deref())
        });
        let headers = headers::untrusted(raw);
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp: message.timestamp().to_millis(),
            sample,
            already_produced: false,
        }
    }
}

/// The window being filled: closes at `size` decodable samples or `max_wait` after its first
/// record, whichever comes first.
pub(super) struct OpenWindow {
    pub records: Vec<InputRecord>,
    samples: usize,
    size: usize,
    max_wait: Duration,
    opened: Option<Instant>,
}

impl OpenWindow {
    pub(super) fn new(size: usize, max_wait: Duration) -> Self {
        Self { records: Vec::new(), samples: 0, size, max_wait, opened: None }
    }

    pub(super) fn push(&mut self, record: InputRecord) {
        self.opened.get_or_insert_with(Instant::now);
        if record.sample.is_ok() && !record.already_produced {
            self.samples += 1;
        }
        self.records.push(record);
    }

    pub(super) fn is_full(&self) -> bool {
        self.samples >= self.size
    }

    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// When the window closes by time, if it has records.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.opened.map(|t| t + self.max_wait)
    }

    pub(super) fn is_due(&self, now: Instant) -> bool {
        self.is_full() || self.deadline().is_some_and(|d| now >= d)
    }

    /// Takes the records out, leaving an empty window with the same limits.
    pub(super) fn take(&mut self) -> Vec<InputRecord> {
        self.samples = 0;
        self.opened = None;
        std::mem::take(&mut self.records)
    }

    /// Drops the records of partitions no longer assigned (they will be re-read by their next
    /// owner from the committed offsets).
    pub(super) fn drop_partitions(&mut self, revoked: &[i32]) {
        let records = self.take();
        for r in records.into_iter().filter(|r| !revoked.contains(&r.partition)) {
            self.push(r);
        }
    }
}
