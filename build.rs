//! Bakes the commit the binary is built from into it (`LOSSGATE_BUILD_COMMIT`, and
//! `LOSSGATE_BUILD_DIRTY` when the engine's sources differed from it), so that an evaluation
//! states which engine measured its numbers (`src/eval/provenance.rs`) whatever the tree has
//! become meanwhile. Outside a git checkout both are empty.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let changed = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        "src",
        "config",
        "Cargo.toml",
        "Cargo.lock",
    ]);
    let dirty = !commit.is_empty() && changed.is_some_and(|c| !c.is_empty());
    println!("cargo:rustc-env=LOSSGATE_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=LOSSGATE_BUILD_DIRTY={}", if dirty { "1" } else { "" });
    // Run again when a commit moves HEAD or the sources change (they are rebuilt then anyway).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        for path in ["HEAD", "refs/heads", "packed-refs"] {
            println!("cargo:rerun-if-changed={dir}/{path}");
        }
    }
    for path in ["src", "config", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
