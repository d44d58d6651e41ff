//! Build-time facts for `sigma_build_info` and `--version`: the git revision of the source
//! and the rustc that compiled it. Read from the local checkout and the local compiler only
//! (no network); a build outside a git checkout says `unknown`. `SIGMA_REVISION` in the
//! environment overrides the revision (for packagers building from a tarball).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SIGMA_REVISION");
    let revision = std::env::var("SIGMA_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".to_owned());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rustc_version = run(&rustc, &["-V"])
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SIGMA_REVISION={revision}");
    println!("cargo:rustc-env=SIGMA_RUSTC={rustc_version}");
}

/// `git rev-parse --short=12 HEAD`; also asks cargo to rerun when HEAD or the branch it points
/// to moves. (No `-dirty` mark: cargo would not rerun this script when a file is edited, so
/// the mark would go stale.)
fn git_revision() -> Option<String> {
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = run("git", &["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(r) = run("git", &["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = run("git", &["rev-parse", "--git-path", &r]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    run("git", &["rev-parse", "--short=12", "HEAD"])
}

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}
