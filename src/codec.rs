//! Decoding input records into samples, and the reasons a record is refused.
//!
//! A record that does not decode, or does not fit the configured shape, is never dropped: its
//! [`Rejection`] travels with it to the dead-letter topic.

use serde::Deserialize;

/// How a record's value encodes a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Codec {
    /// `{"features": [f32, ...], "label": <int>}`; other fields are ignored.
    #[default]
    Json,
    /// Little-endian f32 features as the value; the label, in decimal text, in a header.
    F32le,
}

/// What the decoder checks against.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeRules {
    pub codec: Codec,
    pub features: usize,
    pub classes: usize,
    pub max_record_bytes: usize,
    /// The header holding the label for the binary codec.
    pub label_header: String,
}

/// Why a record cannot be a sample. `code()` is the short label used in metrics and headers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("the record has no value")]
    EmptyValue,
    #[error("the value is {size} bytes, over the limit of {limit} (kafka.max_record_bytes)")]
    TooLarge { size: usize, limit: usize },
    #[error("the value is not valid JSON for a sample: {0}")]
    NotJson(String),
    #[error("{got} features, the config says input.features = {expected}")]
    WrongLength { got: usize, expected: usize },
    #[error("feature {index} is not a finite number")]
    NonFinite { index: usize },
    #[error("label {0} is not an integer")]
    LabelNotInteger(String),
    #[error("label {label} is outside 0..{classes} (input.classes)")]
    LabelOutOfRange { label: i64, classes: usize },
    #[error("binary value of {0} bytes is not a whole number of little-endian f32s")]
    NotWholeFloats(usize),
    #[error("the label header {0:?} is missing")]
    MissingLabelHeader(String),
}

impl Rejection {
    /// Every value [`Self::code`] can return.
    pub const CODES: [&'static str; 9] = [
        "empty_value",
        "too_large",
        "not_json",
        "wrong_length",
        "non_finite",
        "label_not_integer",
        "label_out_of_range",
        "not_whole_floats",
        "missing_label_header",
    ];

    pub fn code(&self) -> &'static str {
        match self {
            Rejection::EmptyValue => "empty_value",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::NotJson(_) => "not_json",
            Rejection::WrongLength { .. } => "wrong_length",
            Rejection::NonFinite { .. } => "non_finite",
            Rejection::LabelNotInteger(_) => "label_not_integer",
            Rejection::LabelOutOfRange { .. } => "label_out_of_range",
            Rejection::NotWholeFloats(_) => "not_whole_floats",
            Rejection::MissingLabelHeader(_) => "missing_label_header",
        }
    }
}

/// A decoded sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub features: Vec<f32>,
    pub label: i64,
}

#[derive(Deserialize)]
struct JsonRecord {
    features: Vec<f64>,
    label: serde_json::Number,
}

impl DecodeRules {
    /// Decodes one record; `header` looks a header's value up by name.
    pub fn decode<'h>(
        &self,
        value: Option<&[u8]>,
        header: impl Fn(&str) -> Option<&'h [u8]>,
    ) -> Result<Sample, Rejection> {
        let value = match value {
            Some(v) if !v.is_empty() => v,
            _ => return Err(Rejection::EmptyValue),
        };
        if value.len() > self.max_record_bytes {
            return Err(Rejection::TooLarge { size: value.len(), limit: self.max_record_bytes });
        }
        let sample = match self.codec {
            Codec::Json => decode_json(value)?,
            Codec::F32le => decode_f32le(value, header(&self.label_header), &self.label_header)?,
        };
        self.check(sample)
    }

    fn check(&self, sample: Sample) -> Result<Sample, Rejection> {
        if sample.features.len() != self.features {
            return Err(Rejection::WrongLength { got: sample.features.len(), expected: self.features });
        }
        if let Some(index) = sample.features.iter().position(|v| !v.is_finite()) {
            return Err(Rejection::NonFinite { index });
        }
        if sample.label < 0 || sample.label >= self.classes as i64 {
            return Err(Rejection::LabelOutOfRange { label: sample.label, classes: self.classes });
        }
        Ok(sample)
    }
}

/// A label as text: an integer, or a float with no fraction (`3.0`, as numpy and JavaScript
/// write integers).
fn integer_label(text: &str) -> Result<i64, Rejection> {
    let trimmed = text.trim();
    trimmed
        .parse::<i64>()
        .ok()
        .or_else(|| trimmed.parse::<f64>().ok().and_then(whole_number))
        .ok_or_else(|| Rejection::LabelNotInteger(text.to_string()))
}

/// `v` as an i64 when it is a whole number within i64's range.
fn whole_number(v: f64) -> Option<i64> {
    // 2^63 is exactly representable; anything at or beyond it does not fit.
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    (v.is_finite() && v.fract() == 0.0 && v.abs() < TWO_POW_63).then_some(v as i64)
}

fn decode_json(value: &[u8]) -> Result<Sample, Rejection> {
    // serde reads a struct from a JSON array too (`[[0.5], 1]`); the format is an object.
    if value.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Rejection::NotJson("expected an object {\"features\": [...], \"label\": n}".into()));
    }
    let record: JsonRecord = serde_json::from_slice(value).map_err(|e| Rejection::NotJson(e.to_string()))?;
    let label = record
        .label
        .as_i64()
        .or_else(|| record.label.as_f64().and_then(whole_number))
        .ok_or_else(|| Rejection::LabelNotInteger(record.label.to_string()))?;
    // f64 values beyond f32's range become infinite here and are refused by the shape check.
    Ok(Sample { features: record.features.iter().map(|&v| v as f32).collect(), label })
}

fn decode_f32le(value: &[u8], label: Option<&[u8]>, header_name: &str) -> Result<Sample, Rejection> {
    if !value.len().is_multiple_of(4) {
        return Err(Rejection::NotWholeFloats(value.len()));
    }
    let label = label.ok_or_else(|| Rejection::MissingLabelHeader(header_name.to_string()))?;
    let label = integer_label(&String::from_utf8_lossy(label))?;
    let features = value.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok(Sample { features, label })
}

/// Encodes a sample as the JSON codec expects (used by the demo's producer and the tests).
pub fn encode_json(features: &[f32], label: i64) -> Vec<u8> {
    let mut out = String::with_capacity(features.len() * 4 + 32);
    out.push_str("{\"features\":[");
    for (i, v) in features.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if *v == 0.0 {
            out.push('0');
        } else {
            out.push_str(&format!("{v}"));
        }
    }
    out.push_str(&format!("],\"label\":{label}}}"));
    out.into_bytes()
}

/// Encodes features for the binary codec (the label goes in the header).
pub fn encode_f32le(features: &[f32]) -> Vec<u8> {
    features.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(codec: Codec) -> DecodeRules {
        DecodeRules { codec, features: 3, classes: 10, max_record_bytes: 1000, label_header: "label".into() }
    }

    fn json(text: &str) -> Result<Sample, Rejection> {
        rules(Codec::Json).decode(Some(text.as_bytes()), |_| None)
    }

    #[test]
    fn valid_json_and_binary_decode_to_the_same_sample() {
        let a = json(r#"{"features": [0.5, 1, -2.25], "label": 7, "extra": {"ignored": true}}"#).unwrap();
        let bytes = encode_f32le(&[0.5, 1.0, -2.25]);
        let b =
            rules(Codec::F32le).decode(Some(&bytes), |h| (h == "label").then_some(b"7".as_slice())).unwrap();
        assert_eq!(a, b);
        assert_eq!(json(std::str::from_utf8(&encode_json(&[0.5, 1.0, -2.25], 7)).unwrap()).unwrap(), a);
    }

    #[test]
    fn malformed_json_records_are_refused_with_their_reason() {
        let cases: &[(&str, &str)] = &[
            ("not json", "not_json"),
            (r#"{"features": "abc", "label": 1}"#, "not_json"),
            (r#"{"features": [1, 2], "label": 1}"#, "wrong_length"),
            (r#"{"features": [1, 2, 3, 4], "label": 1}"#, "wrong_length"),
            (r#"{"features": [1, 2, 1e39], "label": 1}"#, "non_finite"),
            (r#"{"features": [1, 2, NaN], "label": 1}"#, "not_json"),
            (r#"{"features": [1, 2, 3], "label": 10}"#, "label_out_of_range"),
            (r#"{"features": [1, 2, 3], "label": -1}"#, "label_out_of_range"),
            (r#"{"features": [1, 2, 3], "label": 1.5}"#, "label_not_integer"),
            (r#"{"features": [1, 2, 3], "label": "1"}"#, "not_json"),
            (r#"{"features": [1, 2, 3]}"#, "not_json"),
            (r#"{"features": [1, 2, 3], "label": 1, "label": 2}"#, "not_json"),
            (r#"[1, 2, 3]"#, "not_json"),
            // serde would read the struct from an array: the documented format is an object.
            (r#"[[1, 2, 3], 1]"#, "not_json"),
            (r#"  [[1, 2, 3], 1]"#, "not_json"),
            (r#"{"features": [1, 2, 3], "label": 1e300}"#, "label_not_integer"),
        ];
        for (text, code) in cases {
            assert_eq!(json(text).unwrap_err().code(), *code, "{text}");
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let roomy = DecodeRules { max_record_bytes: 1 << 20, ..rules(Codec::Json) };
        assert_eq!(roomy.decode(Some(deep.as_bytes()), |_| None).unwrap_err().code(), "not_json");
        assert_eq!(
            rules(Codec::Json).decode(Some(&[0xff, 0xfe, b'{']), |_| None).unwrap_err().code(),
            "not_json"
        );
        assert_eq!(rules(Codec::Json).decode(None, |_| None).unwrap_err().code(), "empty_value");
        assert_eq!(rules(Codec::Json).decode(Some(&[0u8; 1001]), |_| None).unwrap_err().code(), "too_large");
    }

    #[test]
    fn whole_number_labels_written_as_floats_are_integers() {
        assert_eq!(json(r#"{"features": [1, 2, 3], "label": 3.0}"#).unwrap().label, 3);
        assert_eq!(json(r#" {"features": [1, 2, 3], "label": 3}"#).unwrap().label, 3);
        let r = rules(Codec::F32le);
        let as_float = |_: &str| Some(b"3.0".as_slice());
        assert_eq!(r.decode(Some(&encode_f32le(&[1.0, 2.0, 3.0])), as_float).unwrap().label, 3);
        let half = |_: &str| Some(b"3.5".as_slice());
        assert_eq!(
            r.decode(Some(&encode_f32le(&[1.0, 2.0, 3.0])), half).unwrap_err().code(),
            "label_not_integer"
        );
    }

    #[test]
    fn malformed_binary_records_are_refused_with_their_reason() {
        let r = rules(Codec::F32le);
        let label = |h: &str| (h == "label").then_some(b"3".as_slice());
        assert_eq!(r.decode(Some(&[0u8; 13]), label).unwrap_err().code(), "not_whole_floats");
        assert_eq!(r.decode(Some(&[0u8; 16]), label).unwrap_err().code(), "wrong_length");
        assert_eq!(
            r.decode(Some(&encode_f32le(&[1.0, 2.0, 3.0])), |_| None).unwrap_err().code(),
            "missing_label_header"
        );
        let bad_label = |_: &str| Some(b"x".as_slice());
        assert_eq!(
            r.decode(Some(&encode_f32le(&[1.0, 2.0, 3.0])), bad_label).unwrap_err().code(),
            "label_not_integer"
        );
        let inf = encode_f32le(&[1.0, f32::INFINITY, 3.0]);
        assert_eq!(r.decode(Some(&inf), label).unwrap_err().code(), "non_finite");
    }
}
