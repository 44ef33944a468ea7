//! The README's first command on a new machine: the toolchain that
//! `rust-toolchain.toml` names is present but, not installed by rustup from
//! that file, lacks the `wasm32-wasip2` target. runnel must add it itself
//! when rustup is there, and say clearly what is missing when it is not.
//!
//! This test removes the target from the real toolchain for a while (and
//! puts it back however it ends), so it lives in a test binary of its own:
//! `cargo test` runs test binaries one at a time, and no other binary is
//! building functions meanwhile.

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::repo;

const TARGET: &str = "wasm32-wasip2";

/// The sysroot of the toolchain the repository builds with.
fn sysroot() -> PathBuf {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(repo())
        .env_remove("RUSTC")
        .output()
        .expect("rustc runs");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn has_target(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
}

fn rustup(args: &[&str]) {
    let status = Command::new("rustup")
        .args(args)
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(status.success(), "rustup {args:?}");
}

/// Puts the target back when the test ends, passed or not.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        rustup(&["target", "add", TARGET, "--toolchain", &self.0]);
    }
}

/// `runnel invoke` on the probe crate, built into a fresh target
/// directory (so the build really needs the target's standard library),
/// with `path` as PATH and nothing telling runnel which cargo to use.
fn invoke_probe(dir: &Path, path: &str) -> std::process::Output {
    let event = dir.join("event.txt");
    std::fs::write(&event, "hello").unwrap();
    Command::new(env!("CARGO_BIN_EXE_runnel"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["invoke", "functions/testing/probe", "--event"])
        .arg(&event)
        .current_dir(repo())
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .unwrap()
}

/// Without the target: with no rustup on PATH, invoke fails naming the
/// target and the command that adds it; with rustup, it adds the target,
/// says so, builds the crate and runs it.
#[test]
fn a_toolchain_without_the_wasm_target_gets_it_from_rustup() {
    let sysroot = sysroot();
    let toolchain = sysroot.file_name().unwrap().to_string_lossy().into_owned();
    let _restore = Restore(toolchain.clone());
    rustup(&["target", "remove", TARGET, "--toolchain", &toolchain]);
    assert!(!has_target(&sysroot), "the target was removed");
    let dir = tempfile::tempdir().unwrap();

    // A PATH with the toolchain's own cargo and rustc, and no rustup.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for tool in ["cargo", "rustc"] {
        std::os::unix::fs::symlink(sysroot.join("bin").join(tool), bin.join(tool)).unwrap();
    }
    let bare_path = format!("{}:/usr/bin:/bin", bin.display());
    let out = invoke_probe(dir.path(), &bare_path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("has no {TARGET} target"))
            && stderr.contains(&format!("rustup target add {TARGET}")),
        "{stderr}"
    );
    assert!(!has_target(&sysroot));

    // The machine's PATH, where rustup is.
    let out = invoke_probe(dir.path(), &std::env::var("PATH").unwrap());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    assert!(
        stderr.contains(&format!("no {TARGET} target; adding it with rustup")),
        "{stderr}"
    );
    assert!(has_target(&sysroot), "rustup added the target");
    assert!(stdout.contains("1 output(s)"), "{stdout}");
    assert!(
        stdout.contains("hello"),
        "the probe echoed the event: {stdout}"
    );
}
