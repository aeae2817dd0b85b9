//! Every lossgate window of a comparison, written row by row as CSV (`lossgate eval
//! --dump-windows DIR`), so that the scoring stage can be studied and re-run offline: each
//! window's samples and probes with what the engine measured of them (loss trajectory, the other
//! views), what it decided, and the truth the harness knows (which attack poisoned a sample).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::defence::StreamRun;
use super::scenario::Scenario;
use crate::engine::WindowOutcome;

/// `DIR/seed{seed}-window{index}.csv` for every window of `run`; returns the files written.
pub(crate) fn write_windows(
    dir: &Path,
    seed: u64,
    scenario: &Scenario,
    run: &StreamRun,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (index, window) in run.windows.iter().enumerate() {
        let path = dir.join(format!("seed{seed}-window{index}.csv"));
        let text = window_csv(scenario, window.start, &window.outcome);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// One row per window sample, then one per probe. `origin`: the attack's index, `clean`, or
/// `probe`; `flagged` and `kept_hard_clean`: the decision (empty for a probe); `held_out`: a
/// first-pass suspect, judged by the first shadow (empty with one pass, and for a probe); `score`:
/// the fused score (a probe's: the one the threshold was calibrated on, so that
/// `scripts/classes-from-dump.py` can set each class's probes against its clean samples);
/// `grey_zone_top`: the grey zone's upper edge (empty when `decision.keep_hard_clean` is off);
/// `trajectory`: the trajectory view alone (BaDLoss: the distance to the nearest probe
/// trajectories) before fusion, from the shadow whose score `score` took (for a probe too, so
/// it may differ from the shadow of its loss columns); the other views are empty where the
/// config leaves them off (`label_vote`: the share of its nearest window samples that carry
/// another label); `label_agreement`: the hard-clean rule's label vote;
/// `input_signature`: the score along the class's shared direction off the probes' principal
/// subspace; `input_distance`: the squared Mahalanobis distance from the probes' mean;
/// `repeated_values`: how much more often its values recur among the window's samples than among
/// the probes; `joint_recurrence`: how much more often two of its values recur together than the
/// window's counts of each alone expect, beyond the probes on that pair of features, on its
/// furthest pair (the hard-clean rule's); then the loss in every epoch under the shadow that judged
/// the row (the second's for a probe) and the features as the engine saw them before scaling.
fn window_csv(scenario: &Scenario, start: usize, outcome: &WindowOutcome) -> String {
    let samples = outcome.sample_count();
    let epochs = outcome.losses.ncols();
    let features = scenario.stream.features.ncols();
    let mut text = String::from(
        "row,origin,label,flagged,kept_hard_clean,held_out,score,threshold,grey_zone_top,trajectory,representation,label_disagreement,range_exceedance,label_vote,label_agreement,input_signature,input_distance,repeated_values,joint_recurrence",
    );
    (1..=epochs).for_each(|e| {
        let _ = write!(text, ",loss_epoch{e}");
    });
    (0..features).for_each(|f| {
        let _ = write!(text, ",feature{f}");
    });
    text.push('\n');
    let view = |values: &Option<Vec<f32>>, row: usize| {
        values.as_ref().map(|v| v[row].to_string()).unwrap_or_default()
    };
    // The label vote of the hard-clean rule, which asks it of samples and probes alike.
    let agreement = |row: usize| {
        let neighbours = outcome.views.sample_neighbours.as_ref();
        neighbours.and_then(|n| n.label_agreement.get(row)).map(f32::to_string).unwrap_or_default()
    };
    for row in 0..outcome.labels.len() {
        let (origin, decided, x) = match row < samples {
            true => {
                let i = start + row;
                let origin = scenario.origin[i].map_or("clean".to_string(), |a| a.to_string());
                let d = &outcome.decisions[row];
                let held_out =
                    outcome.first_pass.as_ref().map(|f| f.held_out[row].to_string()).unwrap_or_default();
                let decided =
                    format!("{},{},{held_out},{}", d.flagged, d.kept_hard_clean, outcome.sample_scores[row]);
                (origin, decided, scenario.stream.features.row(i))
            }
            false => {
                let probe = row - samples;
                let decided = format!(",,,{}", outcome.probe_scores[probe]);
                ("probe".to_string(), decided, scenario.probes.features.row(probe))
            }
        };
        let _ = write!(
            text,
            "{row},{origin},{},{decided},{},{},{},{},{},{},{},{},{},{},{},{}",
            outcome.labels[row],
            outcome.threshold.value,
            outcome.grey_zone_top.map(|top| top.to_string()).unwrap_or_default(),
            outcome.trajectory_scores[row],
            view(&outcome.views.representation, row),
            view(&outcome.views.label_disagreement, row),
            view(&outcome.views.range_exceedance, row),
            view(&outcome.views.label_vote, row),
            agreement(row),
            view(&outcome.views.input_signature, row),
            view(&outcome.views.input_distance, row),
            view(&outcome.views.repeated_values, row),
            view(&outcome.views.joint_recurrence, row),
        );
        let losses = match row < samples {
            true => outcome.trajectory(row),
            false => outcome.losses.row(row).to_vec(),
        };
        losses.iter().for_each(|l| {
            let _ = write!(text, ",{l}");
        });
        x.iter().for_each(|v| {
            let _ = write!(text, ",{v}");
        });
        text.push('\n');
    }
    text
}
