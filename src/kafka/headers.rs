//! The headers lossgate adds to the records it writes, and header access that never trusts the
//! bytes: keys are read as raw bytes (rdkafka's `Headers::iter` panics on a key that is not
//! UTF-8) and incoming `lossgate-*` headers are renamed so that only lossgate writes them.

use std::ffi::{c_char, c_void, CStr};

use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedMessage, OwnedHeaders};

/// `topic/partition/offset` of the input record an output record came from.
pub const SOURCE: &str = "lossgate-source";
pub const SCORE: &str = "lossgate-score";
pub const THRESHOLD: &str = "lossgate-threshold";
pub const WINDOW: &str = "lossgate-window";
/// Why a record was quarantined, dead-lettered, or forwarded although above the threshold.
pub const REASON: &str = "lossgate-reason";
/// `forward`, `quarantine`, [`KEPT_HARD_CLEAN`], or in observe mode `flagged` (forwarded
/// anyway).
pub const DECISION: &str = "lossgate-decision";
/// The decision of a record above the threshold forwarded as hard clean data
/// (`decision.keep_hard_clean`); its `lossgate-reason` says why.
pub const KEPT_HARD_CLEAN: &str = "kept-hard-clean";
/// On a quarantined record: its loss after each shadow epoch (the pass that decided),
/// comma-separated.
pub const TRAJECTORY: &str = "lossgate-trajectory";
/// On a quarantined record: the 10th, 50th and 90th percentile of its window's same-label
/// probe losses in each epoch, `p10/p50/p90` per epoch, comma-separated.
pub const PROBE_BAND: &str = "lossgate-probe-band";
/// On a dead-letter copy written without its value: the size of the value that was dropped.
pub const ORIGINAL_SIZE: &str = "lossgate-original-size";

/// Every header lossgate writes starts with this; incoming ones are renamed (see [`untrusted`]).
const OWN_PREFIX: &[u8] = b"lossgate-";
/// What an incoming `lossgate-*` header is renamed to: `upstream-lossgate-*`.
pub const UPSTREAM_PREFIX: &str = "upstream-";

/// One header as bytes: key, value (`None`: a header without a value).
pub type RawHeader = (Vec<u8>, Option<Vec<u8>>);

/// The headers of a message, keys and values as bytes, in order.
pub fn read_raw(message: &BorrowedMessage<'_>) -> Vec<RawHeader> {
    let mut headers: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: the message pointer is valid for the borrow; librdkafka keeps ownership of the
    // headers, which live as long as the message.
    let err = unsafe { rdsys::rd_kafka_message_headers(message.ptr(), &mut headers) };
    if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
        return Vec::new();
    }
    let count = unsafe { rdsys::rd_kafka_header_cnt(headers) };
    let mut out = Vec::with_capacity(count);
    for idx in 0..count {
        let mut name: *const c_char = std::ptr::null();
        let mut value: *const c_void = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: idx < count; the out-pointers are written by librdkafka and point into the
        // headers, which outlive this loop; the name is NUL-terminated.
        let err = unsafe { rdsys::rd_kafka_header_get_all(headers, idx, &mut name, &mut value, &mut size) };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        let key = unsafe { CStr::from_ptr(name) }.to_bytes().to_vec();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value as *const u8, size) }.to_vec());
        out.push((key, value));
    }
    out
}

/// The value of the last header named `name` (lossgate's own header is the last it adds).
pub fn last_value<'a>(headers: &'a [RawHeader], name: &str) -> Option<&'a [u8]> {
    headers.iter().rev().find(|(k, _)| k == name.as_bytes()).and_then(|(_, v)| v.as_deref())
}

/// Incoming headers as lossgate forwards them: `lossgate-*` keys, which only lossgate may
/// write, become `upstream-lossgate-*`; everything else is kept byte for byte.
pub fn untrusted(headers: Vec<RawHeader>) -> Vec<RawHeader> {
    headers
        .into_iter()
        .map(|(key, value)| {
            if key.starts_with(OWN_PREFIX) {
                let mut renamed = UPSTREAM_PREFIX.as_bytes().to_vec();
                renamed.extend_from_slice(&key);
                (renamed, value)
            } else {
                (key, value)
            }
        })
        .collect()
}

/// Appends a header whose key may be any bytes (rdkafka's `OwnedHeaders::insert` takes `&str`).
/// A key holding a NUL byte cannot be written by librdkafka and is cut there.
pub fn add_raw(headers: OwnedHeaders, key: &[u8], value: Option<&[u8]>) -> OwnedHeaders {
    let key = key.split(|&b| b == 0).next().unwrap_or_default();
    let native = headers.as_borrowed() as *const _ as *mut rdsys::rd_kafka_headers_t;
    let (value_ptr, value_len) = match value {
        Some(v) => (v.as_ptr() as *const c_void, v.len() as isize),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `as_borrowed` is a view of the native headers that `headers` owns (rdkafka's
    // `BorrowedHeaders` is a zero-sized type over the native pointer); librdkafka copies the
    // key and value.
    let _ = unsafe {
        rdsys::rd_kafka_header_add(
            native,
            key.as_ptr() as *const c_char,
            key.len() as isize,
            value_ptr,
            value_len,
        )
    };
    headers
}

/// A trajectory as [`TRAJECTORY`] carries it: four significant digits per epoch.
pub fn encode_trajectory(losses: &[f32]) -> String {
    losses.iter().map(|l| format!("{l:.4e}")).collect::<Vec<_>>().join(",")
}

pub fn parse_trajectory(text: &str) -> Option<Vec<f32>> {
    text.split(',').map(|v| v.trim().parse().ok()).collect()
}

/// A probe band as [`PROBE_BAND`] carries it.
pub fn encode_band(band: &[[f32; 3]]) -> String {
    band.iter().map(|[lo, mid, hi]| format!("{lo:.4e}/{mid:.4e}/{hi:.4e}")).collect::<Vec<_>>().join(",")
}

pub fn parse_band(text: &str) -> Option<Vec<[f32; 3]>> {
    text.split(',')
        .map(|epoch| {
            let v: Vec<f32> = epoch.split('/').map(|x| x.trim().parse().ok()).collect::<Option<_>>()?;
            <[f32; 3]>::try_from(v).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn incoming_lossgate_headers_are_renamed_and_others_kept() {
        let kept = untrusted(vec![
            (b"lossgate-source".to_vec(), Some(b"t/0/1".to_vec())),
            (vec![0xff, 0xfe], None),
            (b"trace".to_vec(), Some(b"x".to_vec())),
        ]);
        assert_eq!(kept[0].0, b"upstream-lossgate-source");
        assert_eq!(kept[1].0, vec![0xff, 0xfe]);
        assert_eq!(kept[2], (b"trace".to_vec(), Some(b"x".to_vec())));
        assert_eq!(last_value(&kept, SOURCE), None, "a forged source header is not ours");
    }

    #[test]
    fn raw_keys_are_written_as_given() {
        let h = add_raw(OwnedHeaders::new(), b"plain", Some(b"v"));
        let h = add_raw(h, &[b'k', 0xc3, 0x28], None);
        assert_eq!(h.count(), 2);
        assert_eq!(h.get(0).key, "plain");
    }
}
