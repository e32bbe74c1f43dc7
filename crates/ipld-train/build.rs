//! Records the git commit the binary is built from (run.json's `git_commit`), when built inside
//! a checkout with git available; otherwise nothing.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    if let Some(commit) = git(&["rev-parse", "HEAD"]) {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        let suffix = if dirty { "+dirty" } else { "" };
        println!("cargo:rustc-env=IPLD_GIT_COMMIT={commit}{suffix}");
        if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
            println!("cargo:rerun-if-changed={dir}/HEAD");
            println!("cargo:rerun-if-changed={dir}/index");
            println!("cargo:rerun-if-changed={dir}/refs");
            // Edited sources make the tree dirty without touching the index.
            println!("cargo:rerun-if-changed=src");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
