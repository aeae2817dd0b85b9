//! Bad input: every kind of malformed record is dead-lettered with its reason, by the decoder
//! and through the running daemon, which keeps going; and a bounded fuzz of both decoders.

mod common;

use std::time::{Duration, Instant};

use common::broker::Tansu;
use common::corpus::{binary_corpus, json_corpus, Malformed};
use common::firewall::{produce, produce_f32le, read_outputs, setup, Firewall};
use lossgate::codec::{Codec, DecodeRules};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const MAX_BYTES: usize = 20_000;

fn rules(codec: Codec) -> DecodeRules {
    DecodeRules {
        codec,
        features: 784,
        classes: 10,
        max_record_bytes: MAX_BYTES,
        label_header: "label".into(),
    }
}

fn decode(rules: &DecodeRules, m: &Malformed) -> Result<lossgate::codec::Sample, lossgate::codec::Rejection> {
    rules.decode(Some(&m.value), |name| if name == "label" { m.label_header } else { None })
}

#[test]
fn corpus_has_over_twenty_kinds_and_each_gets_its_reason() {
    let json = json_corpus(MAX_BYTES);
    let binary = binary_corpus();
    assert!(json.len() + binary.len() >= 20);
    for (codec, corpus) in [(Codec::Json, json), (Codec::F32le, binary)] {
        let r = rules(codec);
        for m in &corpus {
            match decode(&r, m) {
                Ok(_) => panic!("{codec:?} accepted malformed record {:?}", m.name),
                Err(e) => assert_eq!(e.code(), m.reason, "{codec:?} {:?}: {e}", m.name),
            }
        }
    }
}

async fn send_corpus(brokers: &str, topic: &str, corpus: &[Malformed]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("message.max.bytes", "1000000")
        .create()
        .unwrap();
    for (i, m) in corpus.iter().enumerate() {
        let key = format!("bad-corpus-{i}");
        let mut record = FutureRecord::to(topic).key(&key).payload(&m.value);
        if let Some(label) = m.label_header {
            record = record.headers(OwnedHeaders::new().insert(Header { key: "label", value: Some(label) }));
        }
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
}

async fn produce_valid(brokers: &str, topic: &str, codec: &str, from: usize, to: usize) -> usize {
    if codec == "json" {
        produce(brokers, topic, from, to, 0).await
    } else {
        produce_f32le(brokers, topic, from, to).await
    }
}

/// Sends the corpus between valid records and checks every malformed record reaches the
/// dead-letter topic with its reason, and that the valid records after them are decided.
async fn corpus_through_the_daemon(prefix: &str, codec: &str, corpus: Vec<Malformed>) {
    let broker = Tansu::start();
    let s = setup(&broker, prefix, "exactly-once", "alpha = 0.1");
    let text = std::fs::read_to_string(&s.config_path).unwrap().replace(
        "checkpoint_topic =",
        &format!("codec = \"{codec}\"\nmax_record_bytes = {MAX_BYTES}\ncheckpoint_topic ="),
    );
    std::fs::write(&s.config_path, text).unwrap();
    let _firewall = Firewall::start(&s.config_path);
    let input = s.topic("samples");
    let valid_before = produce_valid(&s.brokers, &input, codec, 0, 100).await;
    send_corpus(&s.brokers, &input, &corpus).await;
    let valid_after = produce_valid(&s.brokers, &input, codec, 100, 300).await;
    let outputs = read_outputs(&s, valid_before + corpus.len() + valid_after, Duration::from_secs(120));
    let dead: Vec<_> = outputs.iter().filter(|r| r.topic == s.topic("dead-letter")).collect();
    for (i, m) in corpus.iter().enumerate() {
        let key = format!("bad-corpus-{i}");
        let found =
            dead.iter().find(|r| r.key == key).unwrap_or_else(|| panic!("{:?} not dead-lettered", m.name));
        let reason = &found.headers["lossgate-reason"];
        assert!(reason.starts_with(m.reason), "{:?}: reason {reason:?}, expected {}", m.name, m.reason);
    }
    assert_eq!(dead.len(), corpus.len());
    let decided =
        outputs.iter().filter(|r| r.key.starts_with("sample-") && r.topic != s.topic("dead-letter")).count();
    assert_eq!(decided, valid_before + valid_after, "valid {codec} records around the bad ones are decided");
    assert_eq!(
        outputs.len(),
        valid_before + corpus.len() + valid_after,
        "the daemon kept going after the bad records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_records_reach_the_dead_letter_topic_with_their_reason() {
    corpus_through_the_daemon("badjson", "json", json_corpus(MAX_BYTES)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_binary_records_reach_the_dead_letter_topic_with_their_reason() {
    corpus_through_the_daemon("badbin", "f32le", binary_corpus()).await;
}

/// Random byte mutations of the committed seeds (`fuzz/corpus/<target>/`, the cargo-fuzz
/// targets' corpus), for a bounded time per target (`LOSSGATE_FUZZ_SECONDS`, default 3): the
/// same checks as `fuzz/fuzz_targets/`, on stable Rust. No decoder panics; what the record
/// decoders accept fits the shape; a parsed source header and a decoded checkpoint round-trip.
#[test]
fn fuzz_every_decoder_from_the_committed_corpus() {
    use lossgate::kafka::checkpoint::Checkpoint;
    use lossgate::kafka::headers::{parse_band, parse_trajectory};
    use lossgate::kafka::position::TopicPosition;
    use rand::{Rng, SeedableRng};

    fn fits_the_shape(decoded: Result<lossgate::codec::Sample, lossgate::codec::Rejection>) {
        if let Ok(sample) = decoded {
            assert_eq!(sample.features.len(), 784);
            assert!(sample.features.iter().all(|v| v.is_finite()));
            assert!((0..10).contains(&sample.label));
        }
    }
    let json = rules(Codec::Json);
    let f32le = rules(Codec::F32le);
    // (corpus, check of one input given whether a label header is present)
    type Check<'a> = &'a dyn Fn(&[u8], bool);
    let targets: [(&str, Check); 4] = [
        ("json", &|input, _| fits_the_shape(json.decode(Some(input), |_| None))),
        ("f32le", &|input, with_label| {
            let label: &[u8] = if with_label { b"3" } else { b"x" };
            fits_the_shape(f32le.decode(Some(input), |_| Some(label)))
        }),
        ("headers", &|input, _| {
            if let Some(source) = TopicPosition::parse(input) {
                assert_eq!(TopicPosition::parse(source.to_string().as_bytes()), Some(source));
            }
            if let Ok(text) = std::str::from_utf8(input) {
                let _ = (parse_trajectory(text), parse_band(text));
            }
        }),
        ("checkpoint", &|input, _| {
            if let Some(checkpoint) = std::str::from_utf8(input).ok().and_then(Checkpoint::decode) {
                assert_eq!(Checkpoint::decode(&checkpoint.encode()), Some(checkpoint));
            }
        }),
    ];
    let seconds: u64 = std::env::var("LOSSGATE_FUZZ_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut runs = 0u64;
    for (target, check) in targets {
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(root.join(target))
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert!(seeds.len() >= 3, "corpus {target} is committed");
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < deadline {
            let mut input = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..8) {
                let at = if input.is_empty() { 0 } else { rng.random_range(0..input.len()) };
                match rng.random_range(0..4) {
                    0 if !input.is_empty() => input[at] ^= 1 << rng.random_range(0..8),
                    1 => input.insert(at, rng.random()),
                    2 if !input.is_empty() => {
                        input.remove(at);
                    }
                    _ => {
                        let other = &seeds[rng.random_range(0..seeds.len())];
                        let from = rng.random_range(0..other.len().max(1));
                        input.splice(at..at, other[from..other.len().min(from + 16)].iter().copied());
                    }
                }
            }
            check(&input, rng.random_bool(0.5));
            runs += 1;
        }
    }
    eprintln!("fuzzed the decoders with {runs} inputs");
}
