//! Building functions written as Rust crates, so `runnel up` needs no hand
//! step: cargo is asked to build the crate for `wasm32-wasip2` every start,
//! which is a no-op (a fraction of a second) when nothing changed, and the
//! component's path is taken from cargo's own artifact messages rather than
//! guessed from target-dir conventions.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const TARGET: &str = "wasm32-wasip2";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("running cargo to build {crate_dir}: {source} (is cargo installed and on PATH?)")]
    Spawn {
        crate_dir: String,
        source: std::io::Error,
    },
    #[error(
        "building {crate_dir} failed ({status}); cargo's messages are above. Is the {TARGET} target installed? (`rustup target add {TARGET}`)"
    )]
    Failed { crate_dir: String, status: String },
    #[error("cargo built {crate_dir} but produced no .wasm component (is it a `cdylib` crate?)")]
    NoComponent { crate_dir: String },
}

/// Builds the crate in `crate_dir` (release, `wasm32-wasip2`) and returns
/// the path of its component. Cargo's progress goes to our stderr.
pub fn build_crate(crate_dir: &Path) -> Result<PathBuf, BuildError> {
    let display = crate_dir.display().to_string();
    // Absolute, because cargo runs in the crate's directory.
    let crate_dir = &crate_dir
        .canonicalize()
        .map_err(|source| BuildError::Spawn {
            crate_dir: display.clone(),
            source,
        })?;
    let manifest = crate_dir.join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
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
            crate_dir: display.clone(),
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
        crate_dir: display.clone(),
        source,
    })?;
    if !status.success() {
        return Err(BuildError::Failed {
            crate_dir: display,
            status: status.to_string(),
        });
    }
    component.ok_or(BuildError::NoComponent { crate_dir: display })
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
