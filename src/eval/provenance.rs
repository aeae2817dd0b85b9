//! When and with which engine a result was measured, written beside it so that a report read
//! later says which code its numbers describe: the engine moves between sessions, and a sweep
//! or comparison not re-run since then describes an older one.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The day a result was measured and the commit of the engine that measured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// UTC, `YYYY-MM-DD`.
    pub date: String,
    /// The short commit the binary was built from, when it was built in a git checkout.
    pub commit: Option<String>,
    /// Whether the sources it was built from (`src`, `config`, `Cargo.toml`, `Cargo.lock`)
    /// differed from that commit.
    pub uncommitted_changes: bool,
}

impl Provenance {
    /// Now, with the commit this binary was built from (`build.rs`).
    pub fn now() -> Self {
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let commit = Some(env!("LOSSGATE_BUILD_COMMIT").to_string()).filter(|c| !c.is_empty());
        Self {
            date: stamp.chars().take(10).collect(),
            uncommitted_changes: commit.is_some() && !env!("LOSSGATE_BUILD_DIRTY").is_empty(),
            commit,
        }
    }

    /// How a report states it: "measured on 2026-12-06 at a1b2c3d".
    pub fn stated(&self) -> String {
        let at = match (&self.commit, self.uncommitted_changes) {
            (Some(commit), false) => format!(" at {commit}"),
            (Some(commit), true) => format!(" at {commit} with uncommitted changes"),
            (None, _) => String::new(),
        };
        format!("measured on {}{at}", self.date)
    }
}

/// What a report says of a result written before provenance was recorded (session 23).
pub(crate) const UNRECORDED: &str = "written before session 23, from which on a result records when \
    and at which commit it was measured (`git log` on its JSON file under docs/ says when it was \
    committed)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_states_its_day_and_commit_and_whether_the_tree_had_changed() {
        let clean = Provenance {
            date: "2026-12-06".into(),
            commit: Some("a1b2c3d".into()),
            uncommitted_changes: false,
        };
        assert_eq!(clean.stated(), "measured on 2026-12-06 at a1b2c3d");
        let dirty = Provenance { uncommitted_changes: true, ..clean.clone() };
        assert_eq!(dirty.stated(), "measured on 2026-12-06 at a1b2c3d with uncommitted changes");
        let outside = Provenance { commit: None, ..clean };
        assert_eq!(outside.stated(), "measured on 2026-12-06");
    }

    #[test]
    fn now_is_a_calendar_day() {
        let date = Provenance::now().date;
        assert_eq!(date.len(), 10, "{date}");
        assert_eq!(&date[4..5], "-");
        assert!(date[..4].parse::<u32>().is_ok_and(|year| year >= 2024), "{date}");
    }
}
