//! Malformed input records, each with the dead-letter reason it must get.
#![allow(dead_code)]

use lossgate::codec::encode_f32le;

/// A malformed record: name, value, label header (binary codec), expected reason code.
pub struct Malformed {
    pub name: &'static str,
    pub value: Vec<u8>,
    pub label_header: Option<&'static [u8]>,
    pub reason: &'static str,
}

fn m(name: &'static str, value: impl Into<Vec<u8>>, reason: &'static str) -> Malformed {
    Malformed { name, value: value.into(), label_header: None, reason }
}

fn features(n: usize) -> String {
    vec!["0.5"; n].join(",")
}

/// Records the `json` codec must refuse, for 784 features, 10 classes and records of at most
/// `max_bytes` bytes.
pub fn json_corpus(max_bytes: usize) -> Vec<Malformed> {
    let ok = features(784);
    vec![
        m("not json", "this is not json", "not_json"),
        m("truncated json", format!("{{\"features\": [{ok}], \"label\": 1"), "not_json"),
        m("features not a list", r#"{"features": "0.5", "label": 1}"#, "not_json"),
        m(
            "feature of the wrong type",
            format!("{{\"features\": [\"a\",{}], \"label\": 1}}", features(783)),
            "not_json",
        ),
        m("label of the wrong type", format!("{{\"features\": [{ok}], \"label\": \"1\"}}"), "not_json"),
        m("missing label", format!("{{\"features\": [{ok}]}}"), "not_json"),
        m("missing features", r#"{"label": 1}"#, "not_json"),
        m("too few features", format!("{{\"features\": [{}], \"label\": 1}}", features(783)), "wrong_length"),
        m(
            "too many features",
            format!("{{\"features\": [{}], \"label\": 1}}", features(785)),
            "wrong_length",
        ),
        m("empty feature list", r#"{"features": [], "label": 1}"#, "wrong_length"),
        m("NaN", format!("{{\"features\": [NaN,{}], \"label\": 1}}", features(783)), "not_json"),
        m(
            "infinity literal",
            format!("{{\"features\": [Infinity,{}], \"label\": 1}}", features(783)),
            "not_json",
        ),
        m(
            "overflow to infinity",
            format!("{{\"features\": [1e300,{}], \"label\": 1}}", features(783)),
            "non_finite",
        ),
        m("label out of range", format!("{{\"features\": [{ok}], \"label\": 10}}"), "label_out_of_range"),
        m("negative label", format!("{{\"features\": [{ok}], \"label\": -3}}"), "label_out_of_range"),
        m("fractional label", format!("{{\"features\": [{ok}], \"label\": 2.5}}"), "label_not_integer"),
        m("huge label", format!("{{\"features\": [{ok}], \"label\": 1e40}}"), "label_not_integer"),
        m("oversized message", vec![b' '; max_bytes + 1], "too_large"),
        m("empty value", Vec::new(), "empty_value"),
        m("deeply nested json", format!("{}{}", "[".repeat(4000), "]".repeat(4000)), "not_json"),
        m("duplicate keys", format!("{{\"features\": [{ok}], \"label\": 1, \"label\": 2}}"), "not_json"),
        m("invalid utf-8", vec![b'{', 0xff, 0xfe, b'}'], "not_json"),
        m("json array at the top", format!("[{ok}]"), "not_json"),
        m("json null", "null", "not_json"),
    ]
}

/// Records the `f32le` codec must refuse (label header `label`).
pub fn binary_corpus() -> Vec<Malformed> {
    let ok = encode_f32le(&vec![0.5; 784]);
    let mut nan = ok.clone();
    nan[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    let mut inf = ok.clone();
    inf[0..4].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
    let with = |name, value: Vec<u8>, label: Option<&'static [u8]>, reason| Malformed {
        name,
        value,
        label_header: label,
        reason,
    };
    vec![
        with("length not a multiple of 4", ok[..ok.len() - 1].to_vec(), Some(b"1"), "not_whole_floats"),
        with("too few floats", ok[..ok.len() - 4].to_vec(), Some(b"1"), "wrong_length"),
        with("NaN feature", nan, Some(b"1"), "non_finite"),
        with("infinite feature", inf, Some(b"1"), "non_finite"),
        with("missing label header", ok.clone(), None, "missing_label_header"),
        with("label header not a number", ok.clone(), Some(b"seven"), "label_not_integer"),
        with("label header out of range", ok.clone(), Some(b"12"), "label_out_of_range"),
        with("empty value", Vec::new(), Some(b"1"), "empty_value"),
    ]
}
