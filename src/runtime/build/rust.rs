//! Building functions written as Rust crates, so `runnel up` needs no hand
//! step: cargo is asked to build the crate for `wasm32-wasip2` every start,
//! which is a no-op (a fraction of a second) when nothing changed, and the
//! component's path is taken from cargo's own artifact messages rather than
//! guessed from target-dir conventions.
//!
//! A toolchain that rustup did not install from `rust-toolchain.toml`
//! (one the machine image provides under that version) lacks the targets the
//! file lists, since rustup adds them only when it installs the toolchain.
//! So before building, the sysroot is checked for `wasm32-wasip2`, and
//! rustup adds it when it is there; without rustup the error says what to do.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{BuildError, find_on_path};

pub const TARGET: &str = "wasm32-wasip2";

/// Builds the crate in `crate_dir` (release, `wasm32-wasip2`) and returns
/// the path of its component. Cargo's progress goes to our stderr.
pub fn build_crate(crate_dir: &Path) -> Result<PathBuf, BuildError> {
    let display = crate_dir.display().to_string();
    // Absolute, because cargo runs in the crate's directory.
    let crate_dir = &crate_dir
        .canonicalize()
        .map_err(|source| BuildError::Spawn {
            tool: "cargo".into(),
            dir: display.clone(),
            source,
        })?;
    let manifest = crate_dir.join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    ensure_target(crate_dir, Path::new(&cargo), &display)?;
    let mut child = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .current_dir(crate_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| BuildError::Spawn {
            tool: "cargo".into(),
            dir: display.clone(),
            source,
        })?;
    let manifest = manifest.canonicalize().unwrap_or(manifest);
    let mut component = None;
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(path) = wasm_artifact(&line, &manifest) {
            component = Some(path);
        }
    }
    let status = child.wait().map_err(|source| BuildError::Spawn {
        tool: "cargo".into(),
        dir: display.clone(),
        source,
    })?;
    if !status.success() {
        return Err(BuildError::Failed {
            tool: "cargo",
            dir: display,
            status: status.to_string(),
            hint: format!(" (is the {TARGET} target installed? `rustup target add {TARGET}`)"),
        });
    }
    component.ok_or(BuildError::NoComponent { crate_dir: display })
}

/// Makes sure the toolchain cargo builds `crate_dir` with has the
/// `wasm32-wasip2` standard library, adding it with rustup when it is
/// missing. The toolchain is the one `rustc` resolves to in the crate's
/// directory (its `rust-toolchain.toml`, `RUSTUP_TOOLCHAIN`), as for cargo.
fn ensure_target(crate_dir: &Path, cargo: &Path, display: &str) -> Result<(), BuildError> {
    let rustc = rustc_beside(cargo);
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(crate_dir)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| BuildError::Spawn {
            tool: "rustc".into(),
            dir: display.to_owned(),
            source,
        })?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let has_target = |sysroot: &Path| {
        sysroot
            .join("lib/rustlib")
            .join(TARGET)
            .join("lib")
            .is_dir()
    };
    if sysroot.as_os_str().is_empty() || has_target(&sysroot) {
        // An unreadable sysroot is left to cargo, whose error says more.
        return Ok(());
    }
    let missing = |reason: String| BuildError::MissingTarget {
        crate_dir: display.to_owned(),
        sysroot: sysroot.display().to_string(),
        reason,
    };
    let Some(rustup) = find_on_path("rustup") else {
        return Err(missing(format!(
            "rustup is not on PATH to add it; install the target with your toolchain's installer (with rustup: `rustup target add {TARGET}`)"
        )));
    };
    // Processes starting at once (tests, a supervisor's replicas) take
    // turns: two rustups adding one component collide and both fail.
    let lock = std::fs::File::create(std::env::temp_dir().join("runnel-rustup-target.lock"))
        .and_then(|file| file.lock().map(|()| file));
    if has_target(&sysroot) {
        return Ok(()); // another process added it while this one waited
    }
    // rustup names a toolchain by its directory under `toolchains/`.
    let toolchain = sysroot
        .parent()
        .filter(|dir| dir.file_name().is_some_and(|n| n == "toolchains"))
        .and_then(|_| sysroot.file_name())
        .map(|name| name.to_string_lossy().into_owned());
    eprintln!(
        "runnel: the Rust toolchain at {} has no {TARGET} target; adding it with rustup (once, about 30 MB)",
        sysroot.display()
    );
    let mut add = Command::new(&rustup);
    add.args(["target", "add", TARGET]).current_dir(crate_dir);
    if let Some(toolchain) = &toolchain {
        add.args(["--toolchain", toolchain]);
    }
    let status = add.status().map_err(|source| BuildError::Spawn {
        tool: "rustup".into(),
        dir: display.to_owned(),
        source,
    })?;
    drop(lock);
    if !status.success() || !has_target(&sysroot) {
        return Err(missing(format!(
            "`rustup target add {TARGET}` failed ({status}); its messages are above"
        )));
    }
    Ok(())
}

/// The `rustc` of the toolchain `cargo` belongs to: beside it when `cargo`
/// is a toolchain's own binary (as `CARGO` is under `cargo run`), else the
/// one on PATH (a rustup proxy resolves the same toolchain cargo does).
fn rustc_beside(cargo: &Path) -> PathBuf {
    if let Ok(rustc) = std::env::var("RUSTC") {
        return rustc.into();
    }
    let beside = cargo.with_file_name("rustc");
    if cargo.components().count() > 1 && beside.is_file() {
        beside
    } else {
        PathBuf::from("rustc")
    }
}

/// The `.wasm` file of a `compiler-artifact` message for our package.
fn wasm_artifact(line: &str, manifest: &Path) -> Option<PathBuf> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message["reason"] != "compiler-artifact" {
        return None;
    }
    let artifact_manifest = Path::new(message["manifest_path"].as_str()?);
    if artifact_manifest != manifest {
        return None;
    }
    message["filenames"]
        .as_array()?
        .iter()
        .filter_map(|f| f.as_str())
        .find(|f| f.ends_with(".wasm"))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_component_of_our_package_only() {
        let ours = r#"{"reason":"compiler-artifact","manifest_path":"/f/thumbnail/Cargo.toml","filenames":["/t/wasm32-wasip2/release/thumbnail.wasm"]}"#;
        let dep = r#"{"reason":"compiler-artifact","manifest_path":"/reg/image/Cargo.toml","filenames":["/t/libimage.rlib"]}"#;
        let manifest = Path::new("/f/thumbnail/Cargo.toml");
        assert_eq!(
            wasm_artifact(ours, manifest),
            Some(PathBuf::from("/t/wasm32-wasip2/release/thumbnail.wasm"))
        );
        assert_eq!(wasm_artifact(dep, manifest), None);
        assert_eq!(wasm_artifact("not json", manifest), None);
    }
}
