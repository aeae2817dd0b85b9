//! The header values lossgate reads back (`lossgate-source` on recovery, the trajectory and
//! probe band on `quarantine show`): never panic, and a parsed source round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lossgate::kafka::headers::{parse_band, parse_source, parse_trajectory, source_value};

fuzz_target!(|value: &[u8]| {
    if let Some((topic, partition, offset)) = parse_source(value) {
        assert_eq!(parse_source(source_value(&topic, partition, offset).as_bytes()), Some((topic, partition, offset)));
    }
    if let Ok(text) = std::str::from_utf8(value) {
        let _ = parse_trajectory(text);
        let _ = parse_band(text);
    }
});
