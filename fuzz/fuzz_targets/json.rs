//! The JSON record decoder: never panics, and what it accepts fits the shape.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lossgate::codec::{Codec, DecodeRules};

fuzz_target!(|value: &[u8]| {
    let rules =
        DecodeRules { codec: Codec::Json, features: 784, classes: 10, max_record_bytes: 1 << 20, label_header: "label".into() };
    if let Ok(sample) = rules.decode(Some(value), |_| None) {
        assert_eq!(sample.features.len(), 784);
        assert!(sample.features.iter().all(|v| v.is_finite()));
        assert!((0..10).contains(&sample.label));
    }
});
