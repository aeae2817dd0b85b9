//! The exactly-once checkpoint as read back from commit metadata: never panics, and what it
//! accepts encodes to something that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lossgate::kafka::checkpoint::Checkpoint;

fuzz_target!(|value: &[u8]| {
    let Ok(text) = std::str::from_utf8(value) else { return };
    if let Some(checkpoint) = Checkpoint::decode(text) {
        assert_eq!(Checkpoint::decode(&checkpoint.encode()), Some(checkpoint));
    }
});
