//! The read position of every input partition, and what to do when the broker skips offsets.
//!
//! A consumer that resumes at an offset inside a record batch must get that batch (the client
//! drops the records before the offset). tansu 0.6.0 answers with the *next* batch instead, so
//! records are never delivered. Committing past them would lose them silently; under the
//! default policy a gap that cannot be explained stops its partition instead.

use std::collections::HashMap;

/// What one received offset means for its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// The next offset, or the first of a partition whose position is unknown.
    InOrder,
    /// Below the read position: a re-delivery, to be ignored.
    Repeated { expected: i64 },
    /// Past the read position: offsets `expected..offset` were not delivered.
    Gap { expected: i64 },
    /// The partition is stopped at an earlier gap: the record is not taken.
    Stopped,
}

/// Per partition, the offset after the last record taken, and the partitions stopped at a gap.
#[derive(Debug, Default)]
pub(super) struct ReadPositions {
    next: HashMap<i32, i64>,
    /// Partition -> the first offset that was never delivered.
    stopped: HashMap<i32, i64>,
}

impl ReadPositions {
    /// Where reading of `partition` starts (its committed offset, or its first offset).
    pub(super) fn start(&mut self, partition: i32, offset: i64) {
        self.stopped.remove(&partition);
        self.next.insert(partition, offset);
    }

    /// Forgets partitions given up.
    pub(super) fn forget(&mut self, partitions: &[i32]) {
        self.next.retain(|p, _| !partitions.contains(p));
        self.stopped.retain(|p, _| !partitions.contains(p));
    }

    /// Forgets every position: the consumer is about to be put back at the committed offsets.
    pub(super) fn clear(&mut self) {
        self.next.clear();
        self.stopped.clear();
    }

    /// Classifies a received offset; does not move the position.
    pub(super) fn classify(&self, partition: i32, offset: i64) -> Arrival {
        if self.stopped.contains_key(&partition) {
            return Arrival::Stopped;
        }
        match self.next.get(&partition) {
            None => Arrival::InOrder,
            Some(&expected) if offset < expected => Arrival::Repeated { expected },
            Some(&expected) if offset > expected => Arrival::Gap { expected },
            Some(_) => Arrival::InOrder,
        }
    }

    /// Takes the record at `offset`: the position moves past it.
    pub(super) fn take(&mut self, partition: i32, offset: i64) {
        self.next.insert(partition, offset + 1);
    }

    /// Stops `partition` at `missing`, its first offset never delivered.
    pub(super) fn stop(&mut self, partition: i32, missing: i64) {
        self.stopped.insert(partition, missing);
    }

    pub(super) fn stopped_count(&self) -> usize {
        self.stopped.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_in_order_repeated_skipped_and_stopped() {
        let mut r = ReadPositions::default();
        assert_eq!(r.classify(0, 17), Arrival::InOrder, "an unknown start takes the first offset");
        r.start(0, 10);
        assert_eq!(r.classify(0, 10), Arrival::InOrder);
        r.take(0, 10);
        assert_eq!(r.classify(0, 10), Arrival::Repeated { expected: 11 });
        assert_eq!(r.classify(0, 15), Arrival::Gap { expected: 11 });
        r.stop(0, 11);
        assert_eq!(r.classify(0, 11), Arrival::Stopped, "a stopped partition takes nothing more");
        assert_eq!(r.stopped_count(), 1);
        r.forget(&[0]);
        assert_eq!((r.classify(0, 3), r.stopped_count()), (Arrival::InOrder, 0));
        r.start(1, 5);
        r.stop(1, 6);
        r.start(1, 6);
        assert_eq!(r.classify(1, 6), Arrival::InOrder, "a new start clears the stop");
    }
}
