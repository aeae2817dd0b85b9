//! Live reload of the decision section: on SIGHUP and whenever the config file changes
//! (including a Kubernetes ConfigMap's symlink swap, since the file is re-read by path).

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::decision::DecisionConfig;
use crate::metrics::{Metrics, Reload};

/// Outcome of one reload attempt, as counted in `lossgate_config_reloads_total{result}`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReloadResult {
    Applied,
    Unchanged,
    /// The file does not parse or validate: the running config stays.
    Invalid(String),
    /// A section that cannot change live differs: the running config stays.
    Refused(String),
}

/// Checks a new config against the running one; only `[decision]` may change.
pub(super) fn check_reload(
    running: &Config,
    text: &str,
    path: &std::path::Path,
) -> (ReloadResult, Option<DecisionConfig>) {
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let new = match Config::from_toml(text, base) {
        Ok(c) => c,
        Err(e) => return (ReloadResult::Invalid(format!("{e:#}")), None),
    };
    let changed = running.fixed_sections_changed(&new);
    if !changed.is_empty() {
        let sections = changed.iter().map(|s| format!("[{s}]")).collect::<Vec<_>>().join(", ");
        return (
            ReloadResult::Refused(format!(
                "{sections} changed, which cannot change while running (only [decision] reloads live): restart lossgate to apply it"
            )),
            None,
        );
    }
    if new.decision == running.decision {
        return (ReloadResult::Unchanged, None);
    }
    (ReloadResult::Applied, Some(new.decision))
}

/// Watches `path` (polling, so symlink swaps are seen) and SIGHUP; publishes accepted
/// decision sections on `sender`.
pub(super) fn spawn_watcher(
    path: PathBuf,
    mut running: Config,
    sender: watch::Sender<DecisionConfig>,
    metrics: Metrics,
) {
    tokio::spawn(async move {
        let mut last_text = std::fs::read_to_string(&path).ok();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(_) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    if forced || last_text.is_some() {
                        tracing::error!(path = %path.display(), error = %e, "config reload failed: cannot read the file; keeping the running config");
                        metrics.config_reloads.inc(Reload::Invalid);
                    }
                    last_text = None;
                    continue;
                }
            };
            if !forced && last_text.as_deref() == Some(text.as_str()) {
                continue;
            }
            last_text = Some(text.clone());
            let (result, decision) = check_reload(&running, &text, &path);
            match &result {
                ReloadResult::Applied => {
                    let decision = decision.expect("applied reloads carry a decision");
                    tracing::info!(
                        ?decision,
                        "config reloaded: new decision section applies from the next window"
                    );
                    running.decision = decision.clone();
                    let _ = sender.send(decision);
                    metrics.config_reloads.inc(Reload::Applied);
                }
                ReloadResult::Unchanged => {
                    metrics.config_reloads.inc(Reload::Unchanged);
                }
                ReloadResult::Invalid(why) => {
                    tracing::error!(error = %why, "config reload refused: keeping the running config");
                    metrics.config_reloads.inc(Reload::Invalid);
                }
                ReloadResult::Refused(why) => {
                    tracing::error!(error = %why, "config reload refused: keeping the running config");
                    metrics.config_reloads.inc(Reload::Refused);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn only_the_decision_section_reloads() {
        let running = Config::default();
        let p = Path::new("./lossgate.toml");
        let (r, d) = check_reload(&running, "[decision]\nalpha = 0.05\n", p);
        assert_eq!(r, ReloadResult::Applied);
        assert_eq!(d.unwrap().alpha, 0.05);
        assert_eq!(check_reload(&running, "", p).0, ReloadResult::Unchanged);
        let (r, _) = check_reload(&running, "[kafka]\nbrokers = \"other:9092\"\n", p);
        assert!(matches!(r, ReloadResult::Refused(ref why) if why.contains("[kafka]")), "{r:?}");
        let (r, _) = check_reload(&running, "[decision]\nalpha = 2.0\n", p);
        assert!(matches!(r, ReloadResult::Invalid(ref why) if why.contains("decision.alpha")), "{r:?}");
    }
}
