//! The header values lossgate reads back (`lossgate-source` on recovery, the trajectory and
//! probe band on `quarantine show`): never panic, and a parsed source round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lossgate::kafka::headers::{parse_band, parse_trajectory};
use lossgate::kafka::position::TopicPosition;

fuzz_target!(|value: &[u8]| {
    if let Some(source) = TopicPosition::parse(value) {
        assert_eq!(TopicPosition::parse(source.to_string().as_bytes()), Some(source));
    }
    if let Ok(text) = std::str::from_utf8(value) {
        let _ = parse_trajectory(text);
        let _ = parse_band(text);
    }
});
