//! The headers lossgate adds to the records it writes.

/// `topic/partition/offset` of the input record an output record came from.
pub const SOURCE: &str = "lossgate-source";
pub const SCORE: &str = "lossgate-score";
pub const THRESHOLD: &str = "lossgate-threshold";
pub const WINDOW: &str = "lossgate-window";
/// Why a record was quarantined or dead-lettered.
pub const REASON: &str = "lossgate-reason";
/// `forward`, `quarantine`, or in observe mode `flagged` (forwarded anyway).
pub const DECISION: &str = "lossgate-decision";

pub fn source_value(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}/{offset}")
}

/// Parses a [`SOURCE`] header value.
pub fn parse_source(value: &[u8]) -> Option<(String, i32, i64)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.rsplitn(3, '/');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let topic = parts.next()?.to_string();
    Some((topic, partition, offset))
}

#[cfg(test)]
mod tests {
    #[test]
    fn source_round_trips_even_with_slashes_in_the_topic() {
        let v = super::source_value("a/b", 2, 77);
        assert_eq!(super::parse_source(v.as_bytes()), Some(("a/b".to_string(), 2, 77)));
    }
}
