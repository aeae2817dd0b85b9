//! The report: JSON for machines (one file per comparison or sweep, so parts can be re-run
//! alone) and `RESULTS.md` for people, rendered from whatever JSON files are present.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::attack::Attack;
use super::defence::Defence;
use super::sweep::{Sweep, SweepParam};
use super::victim::VictimResult;
use super::{Comparison, DefenceResult, GreyZoneOracle, SeedComparison, Summary};

pub const COMPARISON_FILE: &str = "comparison.json";

pub fn sweep_file(param: SweepParam) -> String {
    format!("sweep-{}.json", param.name())
}

pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{} is not a lossgate result file", path.display()))
}

/// "12.3 ± 0.4 %" (mean ± sd over seeds, in percent).
fn pct(s: &Summary) -> String {
    format!("{:.1} ± {:.1} %", 100.0 * s.mean, 100.0 * s.spread)
}

fn num(s: &Summary) -> String {
    format!("{:.3} ± {:.3}", s.mean, s.spread)
}

fn over_seeds(seeds: &[SeedComparison], f: impl Fn(&SeedComparison) -> Option<f64>) -> Option<Summary> {
    let values: Vec<f64> = seeds.iter().filter_map(f).collect();
    (!values.is_empty()).then(|| Summary::of(&values))
}

fn defence(seed: &SeedComparison, which: Defence) -> Option<&DefenceResult> {
    seed.defences.iter().find(|d| d.defence == which)
}

fn lossgate(seed: &SeedComparison) -> Option<&DefenceResult> {
    defence(seed, Defence::Lossgate)
}

fn cell(s: Option<Summary>, f: fn(&Summary) -> String) -> String {
    s.map(|s| f(&s)).unwrap_or_else(|| "–".into())
}

/// Mean success of the dirty-label backdoors only (every backdoor but the clean-label ones).
fn dirty_label_success(attacks: &[Attack], victim: &VictimResult) -> f64 {
    let rates: Vec<f64> = attacks
        .iter()
        .zip(&victim.attack_success)
        .filter(|(a, _)| !a.is_clean_label())
        .filter_map(|(_, s)| *s)
        .collect();
    rates.iter().sum::<f64>() / rates.len().max(1) as f64
}

/// The worst backdoor's success on one victim, and the mean over every backdoor of its success
/// above the clean-data-only victim's (a trigger that already moves a clean model's answers
/// is not something a filter can take away).
fn worst_success(victim: &VictimResult) -> Option<f64> {
    victim.attack_success.iter().flatten().copied().reduce(f64::max)
}

fn mean_success_added(victim: &VictimResult, clean_only: &VictimResult) -> f64 {
    let added: Vec<f64> = victim
        .attack_success
        .iter()
        .zip(&clean_only.attack_success)
        .filter_map(|(after, base)| Some((*after)? - base.unwrap_or(0.0)))
        .collect();
    added.iter().sum::<f64>() / added.len().max(1) as f64
}

/// The share of poisons lossgate let through, of the dirty-label backdoor that lost the most.
fn worst_dirty_label_missed(attacks: &[Attack], caught_per_attack: &[f64]) -> Option<f64> {
    attacks
        .iter()
        .zip(caught_per_attack)
        .filter(|(a, _)| a.is_backdoor() && !a.is_clean_label())
        .map(|(_, caught)| 1.0 - caught)
        .reduce(f64::max)
}

/// The targets of the detection issue (#10), on lossgate's numbers.
fn targets(c: &Comparison, out: &mut String) {
    let worst = over_seeds(&c.seeds, |s| worst_success(&lossgate(s)?.victim));
    let asr = over_seeds(&c.seeds, |s| lossgate(s).map(|d| d.victim.mean_attack_success()));
    let added = over_seeds(&c.seeds, |s| lossgate(s).map(|d| mean_success_added(&d.victim, &s.clean_only)));
    let missed = over_seeds(&c.seeds, |s| {
        worst_dirty_label_missed(&c.attacks, &lossgate(s)?.detection.caught_per_attack)
    });
    let gap =
        over_seeds(&c.seeds, |s| lossgate(s).map(|d| s.clean_only.clean_accuracy - d.victim.clean_accuracy));
    let frr = over_seeds(&c.seeds, |s| lossgate(s).map(|d| d.detection.clean_false_reject));
    let rows = [
        ("each backdoor's success after lossgate (the worst backdoor)", "≤ 5 %", worst, 0.05),
        ("mean success over every backdoor, clean-label included", "≤ 2 %", asr, 0.02),
        ("(the same, above the clean-data-only model's success with the trigger)", "≤ 2 %", added, 0.02),
        ("dirty-label backdoors: poisons let through (the worst backdoor)", "≤ 1 %", missed, 0.01),
        ("clean accuracy below the clean-data-only model", "≤ 1 point", gap, 0.01),
        ("clean false-reject rate", "≤ 5 %", frr, super::metrics::TARGET_FALSE_REJECT),
    ];
    out.push_str("| target | bound | measured (mean ± sd) | worst seed | met |\n|---|---|---|---|---|\n");
    for (name, bound, value, limit) in rows {
        let Some(v) = value else { continue };
        // Rounded as shown, so that a row reading "5.0 %" against "≤ 5 %" is not called a miss.
        let within = |x: f64| (1000.0 * x).round() <= 1000.0 * limit;
        let met = if within(v.max) {
            "yes, every seed"
        } else if within(v.mean) {
            "on average only"
        } else {
            "**no**"
        };
        let _ = writeln!(out, "| {name} | {bound} | {} | {:.1} % | {met} |", pct(&v), 100.0 * v.max);
    }
}

/// Per attack, what lossgate's calibrated decision caught against what its score alone would
/// catch at the target false-reject rate (threshold set on the truth): where the second is
/// short too, the score falls short; where only the first is, the decision does.
fn score_or_decision(c: &Comparison, out: &mut String) {
    if !c.seeds.iter().filter_map(lossgate).any(|d| !d.detection.caught_at_target_false_reject.is_empty()) {
        return; // results written before the score-alone figure existed
    }
    let target = 100.0 * super::metrics::TARGET_FALSE_REJECT;
    let _ = write!(
        out,
        "\n### The score or the decision\n\nlossgate's decision (calibrated, at the clean \
         false-reject rate it reached: {}) against its score alone with the threshold that \
         rejects exactly {target:.0} % of the clean samples (set on the truth, pooled over the \
         stream's windows): where the score alone misses poisons, the score falls short; where \
         only the decision does, the decision.\n\n| attack | decision: caught | score alone at \
         {target:.0} % false-reject: caught | AUC |\n|---|---|---|---|\n",
        cell(over_seeds(&c.seeds, |s| lossgate(s).map(|d| d.detection.clean_false_reject)), pct),
    );
    for (a, attack) in c.attacks.iter().enumerate() {
        let decided = over_seeds(&c.seeds, |s| lossgate(s).map(|d| d.detection.caught_per_attack[a]));
        let scored = over_seeds(&c.seeds, |s| {
            lossgate(s).and_then(|d| d.detection.caught_at_target_false_reject.get(a).copied().flatten())
        });
        let auc = over_seeds(&c.seeds, |s| lossgate(s).and_then(|d| d.detection.auc_per_attack[a]));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            attack.name,
            cell(decided, pct),
            cell(scored, pct),
            cell(auc, num)
        );
    }
}

fn grey_zone_oracle(seed: &SeedComparison) -> &GreyZoneOracle {
    seed.grey_zone.as_ref().expect("every seed measured it (checked by the caller)")
}

/// Where lossgate's accuracy gap lies: the victim with the clean samples quarantined from the
/// grey zone forwarded after all (an oracle), and what else that zone held.
fn where_accuracy_goes(attacks: &[Attack], seeds: &[SeedComparison], out: &mut String) {
    if seeds.is_empty() || seeds.iter().any(|s| s.grey_zone.is_none()) {
        return; // not measured (hard clean data not kept, or results written before)
    }
    let lossgate_frr = over_seeds(seeds, |s| lossgate(s).map(|d| d.detection.clean_false_reject));
    let oracle_frr = over_seeds(seeds, |s| {
        lossgate(s).map(|d| d.detection.clean_false_reject - grey_zone_oracle(s).clean_rejected)
    });
    let gap = |s: &SeedComparison, accuracy: f64| s.clean_only.clean_accuracy - accuracy;
    let rows = [
        (
            "lossgate",
            lossgate_frr,
            over_seeds(seeds, |s| lossgate(s).map(|d| gap(s, d.victim.clean_accuracy))),
        ),
        (
            "lossgate, its clean rejects from the grey zone forwarded (oracle)",
            oracle_frr,
            over_seeds(seeds, |s| Some(gap(s, grey_zone_oracle(s).victim.clean_accuracy))),
        ),
    ];
    out.push_str(
        "\n### Where the clean accuracy goes\n\nA flagged sample in the grey zone (above the \
         threshold at alpha, not above the one at alpha / 5, inside the probes' input range) is \
         asked whether it is hard clean data; the rule kept these out. Forwarding the clean ones \
         among them after all, an oracle that reads the truth, shows how much of the victim's \
         accuracy gap they hold; the poisons quarantined from the same zone are what a rule that \
         forwarded the whole zone would let in.\n\n| victim trained on | clean false-reject | \
         accuracy below the clean-data-only model |\n|---|---|---|\n",
    );
    for (name, frr, below) in rows {
        let _ = writeln!(out, "| {name} | {} | {} |", cell(frr, pct), cell(below, pct));
    }
    out.push_str(
        "\n| attack | dirty or clean label | its poisons quarantined from the grey zone |\n|---|---|---|\n",
    );
    for (a, attack) in attacks.iter().enumerate() {
        let share = over_seeds(seeds, |s| grey_zone_oracle(s).poisons_rejected_per_attack.get(a).copied());
        let label = if attack.is_clean_label() { "clean" } else { "dirty" };
        let _ = writeln!(out, "| {} | {label} | {} |", attack.name, cell(share, pct));
    }
}

/// When and at which commit a result was measured, as a report states it.
fn measured(provenance: Option<&super::provenance::Provenance>) -> String {
    provenance.map_or_else(|| super::provenance::UNRECORDED.to_string(), |p| p.stated())
}

/// A width the results recorded, or `?` for results written before it was.
fn shown(width: usize) -> String {
    if width == 0 {
        "?".into()
    } else {
        width.to_string()
    }
}

/// The configured rate, and under `auto` the one chosen on each seed.
fn learning_rate_shown(c: &Comparison) -> String {
    let chosen: Vec<String> =
        c.seeds.iter().filter_map(|s| s.shadow_learning_rate).map(|rate| format!("{rate:.5}")).collect();
    match c.settings.learning_rate {
        crate::shadow::LearningRate::Auto if !chosen.is_empty() => {
            format!("auto (chosen on the first window: {} per seed)", chosen.join(", "))
        }
        rate => rate.to_string(),
    }
}

fn comparison_section(c: &Comparison, out: &mut String) {
    let s = &c.settings;
    let _ = writeln!(
        out,
        "Data: {}, {} training samples streamed per seed, {} seeds ({}). Engine (the daemon's \
         defaults): windows of {}, {} probes held out of the training split{}, shadow {}-{:?}-{} \
         for {} epochs at lr {}{}{}, k = {}, decision {}. Victim: MLP {:?}, {} epochs, lr {}, \
         momentum {}. Loss-value baseline: {} shadow epochs at lr {}.\n",
        s.dataset,
        s.stream_samples,
        c.seeds.len(),
        c.seeds.iter().map(|s| s.seed.to_string()).collect::<Vec<_>>().join(", "),
        s.window,
        s.probes,
        match s.probes_every_class {
            true => " (every class given the probes its calibrated threshold needs: probes.every_class)",
            false => "",
        },
        shown(s.features),
        s.hidden,
        shown(s.classes),
        s.epochs,
        learning_rate_shown(c),
        if s.standardize { ", inputs standardised by the probes" } else { "" },
        match s.losses.unwrap_or(crate::shadow::LossRecording::AfterEpoch) {
            crate::shadow::LossRecording::AtStep => ", losses taken at each sample's own step",
            crate::shadow::LossRecording::AfterEpoch => ", losses evaluated after each epoch",
        },
        s.k,
        s.decision,
        s.victim.hidden,
        s.victim.epochs,
        s.victim.learning_rate,
        s.victim.momentum,
        s.loss_value_epochs,
        super::defence::LOSS_VALUE_LEARNING_RATE,
    );
    let _ = writeln!(out, "This comparison was {}.\n", measured(s.measured.as_ref()));
    out.push_str("### Targets\n\n");
    targets(c, out);

    out.push_str("\n### Defences side by side\n\n");
    out.push_str(
        "Loss value and random drop remove as many samples as lossgate did on the same seed, so \
         the comparison is at an equal data budget.\n\n",
    );
    out.push_str("| defence | data dropped | clean false-reject | poisons caught | mean attack success | the same, dirty-label only | clean accuracy | score AUC |\n|---|---|---|---|---|---|---|---|\n");
    let acc = over_seeds(&c.seeds, |s| Some(s.clean_only.clean_accuracy));
    let asr = over_seeds(&c.seeds, |s| Some(s.clean_only.mean_attack_success()));
    let dirty = over_seeds(&c.seeds, |s| Some(dirty_label_success(&c.attacks, &s.clean_only)));
    let _ = writeln!(
        out,
        "| clean data only (reference) | – | – | – | {} | {} | {} | – |",
        cell(asr, pct),
        cell(dirty, pct),
        cell(acc, pct)
    );
    for which in Defence::ALL {
        let d =
            |f: fn(&DefenceResult) -> Option<f64>| over_seeds(&c.seeds, |s| defence(s, which).and_then(f));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            which.name(),
            cell(d(|r| Some(r.detection.dropped)), pct),
            cell(d(|r| Some(r.detection.clean_false_reject)), pct),
            cell(d(|r| Some(r.detection.caught)), pct),
            cell(d(|r| Some(r.victim.mean_attack_success())), pct),
            cell(
                over_seeds(&c.seeds, |s| defence(s, which)
                    .map(|r| dirty_label_success(&c.attacks, &r.victim))),
                pct
            ),
            cell(d(|r| Some(r.victim.clean_accuracy)), pct),
            cell(d(|r| r.detection.auc), num),
        );
    }

    out.push_str("\n### Each attack: its strength, what each defence caught, what still worked\n\n");
    out.push_str("Attack success: share of triggered test images not of the target class that the victim assigns to the target. Caught: share of that attack's poisons the defence dropped.\n\n");
    out.push_str("| attack | kind | target | poisons | success, no defence | clean-only | ");
    for which in &Defence::ALL[1..] {
        let _ = write!(out, "{}: caught / success | ", which.name());
    }
    out.push_str("lossgate AUC |\n|---|---|---|---|---|---|");
    out.push_str(&"---|".repeat(Defence::ALL.len()));
    out.push('\n');
    for (a, attack) in c.attacks.iter().enumerate() {
        let success = |which: Option<Defence>| {
            over_seeds(&c.seeds, |s| match which {
                Some(w) => defence(s, w).and_then(|d| d.victim.attack_success[a]),
                None => s.clean_only.attack_success[a],
            })
        };
        let caught =
            |w: Defence| over_seeds(&c.seeds, |s| defence(s, w).map(|d| d.detection.caught_per_attack[a]));
        let poisons = over_seeds(&c.seeds, |s| Some(s.poisons_per_attack[a] as f64));
        let _ = write!(
            out,
            "| {} | {:?} | {} | {:.0} | {} | {} | ",
            attack.name,
            attack.kind,
            attack.target.map(|t| t.to_string()).unwrap_or_else(|| "random".into()),
            poisons.map(|p| p.mean).unwrap_or(0.0),
            cell(success(Some(Defence::None)), pct),
            cell(success(None), pct),
        );
        for which in &Defence::ALL[1..] {
            let _ = write!(out, "{} / {} | ", cell(caught(*which), pct), cell(success(Some(*which)), pct));
        }
        let auc = over_seeds(&c.seeds, |s| lossgate(s).and_then(|d| d.detection.auc_per_attack[a]));
        let _ = writeln!(out, "{} |", cell(auc, num));
    }

    score_or_decision(c, out);
    where_accuracy_goes(&c.attacks, &c.seeds, out);

    false_reject_per_class(&c.seeds, out);
    let first_seed = c.seeds.first().map_or("?".to_string(), |s| s.seed.to_string());
    let _ = write!(out, "\n### Figures (seed {first_seed})\n\n");
    out.push_str(
        "\
         ![loss trajectories](results/trajectories.png)\n\n\
         ![lossgate score histogram](results/scores-lossgate.png)\n\n\
         ![offline score histogram](results/scores-offline.png)\n\n\
         ![lossgate ROC](results/roc-lossgate.png)\n\n\
         ![offline ROC](results/roc-offline.png)\n",
    );
}

/// Each defence's clean false-reject per class, and beside lossgate's the share of the class's
/// probes above the threshold (in comparisons that measured it): the budget the pooled
/// calibration gave the class, against what its clean samples paid.
fn false_reject_per_class(seeds: &[SeedComparison], out: &mut String) {
    out.push_str("\n### Clean false-reject rate per class\n\n");
    let classes = seeds
        .first()
        .and_then(|s| s.defences.first())
        .map_or(0, |d| d.detection.false_reject_per_class.len());
    let probes_above = |s: &SeedComparison, class: usize| {
        defence(s, Defence::Lossgate)
            .and_then(|d| d.detection.probes_above_threshold_per_class.get(class).copied()?)
    };
    let with_probes = seeds.iter().any(|s| (0..classes).any(|class| probes_above(s, class).is_some()));
    if with_probes {
        out.push_str(
            "lossgate's column is followed by the share of that class's clean probes above the \
             window's threshold (over every window): pooled over the classes it holds alpha, and \
             a class that pays more of the false-reject budget than the others shows it there \
             first (before hard clean data is kept, which takes back about half); a false-reject \
             near or above it means the class's window samples score above its probes, or the \
             grey zone keeps few of them.\n\n",
        );
    }
    out.push_str("| class | ");
    for which in &Defence::ALL[1..] {
        let _ = write!(out, "{} | ", which.name());
        if with_probes && *which == Defence::Lossgate {
            out.push_str("lossgate: its probes above the threshold | ");
        }
    }
    let columns = Defence::ALL.len() - 1 + usize::from(with_probes);
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(columns));
    out.push('\n');
    for class in 0..classes {
        let _ = write!(out, "| {class} | ");
        for which in &Defence::ALL[1..] {
            let v =
                over_seeds(seeds, |s| defence(s, *which).map(|d| d.detection.false_reject_per_class[class]));
            let _ = write!(out, "{} | ", cell(v, pct));
            if with_probes && *which == Defence::Lossgate {
                let _ = write!(out, "{} | ", cell(over_seeds(seeds, |s| probes_above(s, class)), pct));
            }
        }
        out.push('\n');
    }
}

fn sweep_section(sweep: &Sweep, out: &mut String) {
    let name = sweep.param.name();
    let _ = writeln!(
        out,
        "### {name}\n\n`lossgate eval --sweep {name}`; {} samples per seed, seeds {}; {}.\n",
        sweep.stream_samples,
        sweep
            .points
            .first()
            .map(|p| p.seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        measured(sweep.measured.as_ref())
    );
    out.push_str(
        "| value | clean false-reject | poisons caught | score AUC | mean attack success | clean accuracy |",
    );
    let victims = sweep.points.iter().any(|p| !p.victims.is_empty());
    for attack in &sweep.attacks {
        match victims {
            true => write!(out, " {attack}: caught / success |"),
            false => write!(out, " {attack}: caught |"),
        }
        .expect("writing to a String");
    }
    out.push_str("\n|---|---|---|---|---|---|");
    out.push_str(&"---|".repeat(sweep.attacks.len()));
    out.push('\n');
    for p in &sweep.points {
        let _ = write!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            p.value,
            pct(&p.clean_false_reject),
            pct(&p.caught),
            num(&p.auc),
            cell(p.mean_attack_success, pct),
            cell(p.clean_accuracy, pct)
        );
        for a in 0..sweep.attacks.len() {
            let caught: Vec<f64> = p.detections.iter().map(|d| d.caught_per_attack[a]).collect();
            let _ = write!(out, " {:.0} %", 100.0 * Summary::of(&caught).mean);
            let success: Vec<f64> = p.victims.iter().filter_map(|v| v.attack_success[a]).collect();
            if !success.is_empty() {
                let _ = write!(out, " / {:.1} %", 100.0 * Summary::of(&success).mean);
            }
            out.push_str(" |");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "\n![sweep {name}](results/sweep-{name}.png)\n");
}

/// Comparisons run on other data sets, each in a folder of its own under `results_dir`
/// (`docs/results/penbased/comparison.json`), by folder name.
fn other_data_sets(results_dir: &Path) -> Result<Vec<(String, Comparison)>> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(results_dir) else { return Ok(found) };
    for entry in entries.flatten() {
        let path = entry.path();
        if let Some(c) = read_json::<Comparison>(&path.join(COMPARISON_FILE))? {
            found.push((entry.file_name().to_string_lossy().into_owned(), c));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Renders `RESULTS.md` from the JSON files in `results_dir` (a comparison and any sweeps),
/// with figure links under `figures` (the results folder as seen from the Markdown file).
pub fn render_markdown(results_dir: &Path, figures: &str, preface: &str) -> Result<String> {
    let mut out = String::from("# lossgate: evaluation results\n\n");
    out.push_str(preface);
    out.push('\n');
    match read_json::<Comparison>(&results_dir.join(COMPARISON_FILE))? {
        Some(c) => {
            let defences = c.seeds.first().map_or(0, |s| s.defences.len());
            let _ = writeln!(out, "## {} simultaneous attacks, {defences} defences\n", c.attacks.len());
            comparison_section(&c, &mut out);
        }
        None => out.push_str("No comparison has been run yet (`lossgate eval`).\n"),
    }
    for (name, c) in other_data_sets(results_dir)? {
        let defences = c.seeds.first().map_or(0, |s| s.defences.len());
        let _ = writeln!(out, "\n## {name}: {} simultaneous attacks, {defences} defences\n", c.attacks.len());
        let _ = writeln!(
            out,
            "`lossgate eval --config CONFIG --train-csv TRAIN --test-csv TEST --attacks \
             config/attacks/{name}.toml --seeds {} --out docs/results/{name}` (CONFIG sets only \
             `[input]`; the data: `scripts/datasets.sh`). Full report with figures: \
             [results/{name}/RESULTS.md](results/{name}/RESULTS.md).\n",
            c.seeds.iter().map(|s| s.seed.to_string()).collect::<Vec<_>>().join(",")
        );
        let mut section = String::new();
        comparison_section(&c, &mut section);
        out.push_str(&section.replace("](results/", &format!("](results/{name}/")));
    }
    let sweeps: Vec<Sweep> = SweepParam::ALL
        .iter()
        .filter_map(|&p| read_json::<Sweep>(&results_dir.join(sweep_file(p))).transpose())
        .collect::<Result<_>>()?;
    if !sweeps.is_empty() {
        out.push_str("\n## Sweeps: the paper's open questions\n\n");
        out.push_str("Each sweep varies one setting of lossgate (everything else at the defaults) over the same seeds. Sweeps of scoring and decision settings run on the whole stream, the others (which retrain) on the subset each names; where a sweep trains victims, they learn from what lossgate kept at each point, and each attack's column reads caught / success.\n\n");
        for sweep in &sweeps {
            sweep_section(sweep, &mut out);
        }
    }
    Ok(out.replace("](results/", &format!("]({figures}/")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::attack::parse_attacks;
    use crate::eval::metrics::Detection;

    fn victim(success: &[Option<f64>]) -> VictimResult {
        VictimResult { trained_on: 100, clean_accuracy: 0.9, attack_success: success.to_vec() }
    }

    #[test]
    fn target_rows_take_the_worst_backdoor_and_what_the_poisons_add() {
        let after = victim(&[Some(0.01), Some(0.20), None]);
        let clean_only = victim(&[Some(0.0), Some(0.16), None]);
        assert_eq!(worst_success(&after), Some(0.20));
        assert_eq!(worst_success(&victim(&[None])), None, "label noise is no backdoor");
        // (0.01 + 0.04) / 2: the trigger that moves a clean model 16 % counts only what it adds.
        assert!((mean_success_added(&after, &clean_only) - 0.025).abs() < 1e-12);
    }

    #[test]
    fn poisons_let_through_count_dirty_label_backdoors_only() {
        let attacks = parse_attacks(
            r#"
            [[attack]]
            name = "dirty"
            kind = "features"
            target = 1
            ratio = 0.01
            features = [0]
            values = [1.0]

            [[attack]]
            name = "clean"
            kind = "features"
            clean_label = true
            target = 1
            ratio = 0.5
            features = [1]
            values = [1.0]

            [[attack]]
            name = "noise"
            kind = "label-flip"
            ratio = 0.01
            "#,
            4,
            3,
        )
        .unwrap();
        let missed = worst_dirty_label_missed(&attacks, &[0.97, 0.5, 0.2]).unwrap();
        assert!((missed - 0.03).abs() < 1e-12, "{missed}");
    }

    /// Seed 1 of a comparison of lossgate alone, on a stream of 100 samples.
    fn lossgate_only(
        detection: Detection,
        clean_only: VictimResult,
        lossgate: VictimResult,
    ) -> SeedComparison {
        SeedComparison {
            seed: 1,
            stream_samples: 100,
            poisons_per_attack: vec![],
            clean_only,
            defences: vec![DefenceResult { defence: Defence::Lossgate, detection, victim: lossgate }],
            seconds: 0.0,
            shadow_learning_rate: None,
            window_paces: vec![],
            windows_rate_rechosen: 0,
            grey_zone: None,
        }
    }

    #[test]
    fn the_accuracy_section_sets_the_grey_zone_oracle_beside_lossgate() {
        let attacks =
            parse_attacks("[[attack]]\nname = \"flip\"\nkind = \"label-flip\"\nratio = 0.01\n", 4, 3)
                .unwrap();
        let detection = Detection {
            dropped: 0.06,
            clean_false_reject: 0.05,
            caught: 0.99,
            caught_per_attack: vec![0.99],
            false_reject_per_class: vec![],
            auc: None,
            auc_per_attack: vec![None],
            caught_at_target_false_reject: vec![],
            probes_above_threshold_per_class: vec![],
        };
        let with_accuracy = |clean_accuracy| VictimResult { clean_accuracy, ..victim(&[None]) };
        let mut seed = lossgate_only(detection, with_accuracy(0.92), with_accuracy(0.90));
        seed.poisons_per_attack = vec![1];
        let mut out = String::new();
        where_accuracy_goes(&attacks, std::slice::from_ref(&seed), &mut out);
        assert!(out.is_empty(), "nothing to say without the oracle: {out}");

        seed.grey_zone = Some(GreyZoneOracle {
            clean_rejected: 0.04,
            poisons_rejected_per_attack: vec![0.25],
            victim: with_accuracy(0.915),
        });
        where_accuracy_goes(&attacks, &[seed], &mut out);
        assert!(out.contains("| lossgate | 5.0 ± 0.0 % | 2.0 ± 0.0 % |"), "{out}");
        assert!(out.contains("forwarded (oracle) | 1.0 ± 0.0 % | 0.5 ± 0.0 % |"), "{out}");
        assert!(out.contains("| flip | dirty | 25.0 ± 0.0 % |"), "{out}");
    }

    #[test]
    fn the_false_reject_per_class_sets_each_classs_probes_above_the_threshold_beside_lossgate() {
        let detection = |probes_above_threshold_per_class| Detection {
            dropped: 0.06,
            clean_false_reject: 0.05,
            caught: 1.0,
            caught_per_attack: vec![],
            false_reject_per_class: vec![0.02, 0.08],
            auc: None,
            auc_per_attack: vec![],
            caught_at_target_false_reject: vec![],
            probes_above_threshold_per_class,
        };
        let seed = |probes_above| lossgate_only(detection(probes_above), victim(&[]), victim(&[]));
        let mut out = String::new();
        false_reject_per_class(&[seed(vec![Some(0.05), Some(0.2)])], &mut out);
        assert!(out.contains("| 1 | 8.0 ± 0.0 % | 20.0 ± 0.0 % | – |"), "{out}");
        // A comparison written before the probes' shares were measured keeps its old table.
        let mut old = String::new();
        false_reject_per_class(&[seed(vec![])], &mut old);
        assert!(old.contains("| 1 | 8.0 ± 0.0 % | – |") && !old.contains("its probes above"), "{old}");
    }
}
