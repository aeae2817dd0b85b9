//! The binary (`f32le`) record decoder with its label header: the first byte of the input
//! chooses the header (absent, a valid label, text), the rest is the record's value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lossgate::codec::{Codec, DecodeRules};

fuzz_target!(|input: &[u8]| {
    let Some((&choice, value)) = input.split_first() else { return };
    let label: Option<&[u8]> = match choice % 3 {
        0 => None,
        1 => Some(b"3"),
        _ => Some(value.get(..4).unwrap_or(value)),
    };
    let rules =
        DecodeRules { codec: Codec::F32le, features: 784, classes: 10, max_record_bytes: 1 << 20, label_header: "label".into() };
    if let Ok(sample) = rules.decode(Some(value), |name| if name == "label" { label } else { None }) {
        assert_eq!(sample.features.len(), 784);
        assert!(sample.features.iter().all(|v| v.is_finite()));
        assert!((0..10).contains(&sample.label));
    }
});
