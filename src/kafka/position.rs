//! Where a record is, as types rather than `(i32, i64)` and `(String, i32, i64)` tuples.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A record's place in a topic known from context (the input topic): partition and offset.
/// Stored (the release log) as a `[partition, offset]` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "(i32, i64)", into = "(i32, i64)")]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

impl From<(i32, i64)> for Position {
    fn from((partition, offset): (i32, i64)) -> Self {
        Self { partition, offset }
    }
}

impl From<Position> for (i32, i64) {
    fn from(p: Position) -> Self {
        (p.partition, p.offset)
    }
}

/// A record's place in a named topic: where an output was written, or the input record a
/// `lossgate-source` header names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl TopicPosition {
    pub fn new(topic: impl Into<String>, partition: i32, offset: i64) -> Self {
        Self { topic: topic.into(), partition, offset }
    }

    /// The position within its topic.
    pub fn position(&self) -> Position {
        Position { partition: self.partition, offset: self.offset }
    }

    /// Parses `topic/partition/offset` (the topic may itself hold slashes).
    pub fn parse(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.rsplitn(3, '/');
        let offset = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        let topic = parts.next()?.to_string();
        Some(Self { topic, partition, offset })
    }
}

/// `topic/partition/offset`: the `lossgate-source` header's form, and how records are named to
/// `lossgate quarantine`.
impl fmt::Display for TopicPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_position_round_trips_through_its_text_form_even_with_slashes_in_the_topic() {
        let p = TopicPosition::new("a/b", 2, 77);
        assert_eq!(p.to_string(), "a/b/2/77");
        assert_eq!(TopicPosition::parse(p.to_string().as_bytes()), Some(p));
        assert_eq!(TopicPosition::parse(b"no-numbers"), None);
        assert_eq!(TopicPosition::parse(b"t/x/1"), None);
    }
}
