//! `runnel up --watch`: what to watch, and when it changed.
//!
//! The pipeline files (and the directories given, for files added), the
//! runtime config, and each function's sources (a project's directory
//! without its build output and dependencies, or the component file). A poll of their sizes
//! and modification times every half second: no file-system notification
//! API to differ between platforms or to miss an editor's rename-over, and
//! a few hundred `stat`s are nothing next to a build.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::pipeline::PipelineConfig;
use crate::runtime::FunctionLocation;

const POLL: Duration = Duration::from_millis(500);

/// Everything whose change reloads: `paths` as `runnel up` was given them,
/// the runtime config file, and the pipelines' functions.
pub fn roots(
    paths: &[PathBuf],
    config_file: Option<&Path>,
    pipelines: &[PipelineConfig],
) -> Vec<PathBuf> {
    let mut roots: BTreeSet<PathBuf> = paths.iter().cloned().collect();
    roots.extend(config_file.map(Path::to_owned));
    for pipeline in pipelines {
        roots.insert(pipeline.file.clone());
        match &pipeline.function.location {
            FunctionLocation::Project { dir, .. } | FunctionLocation::Component(dir) => {
                roots.insert(dir.clone());
            }
        }
    }
    roots.into_iter().collect()
}

/// A digest of every file under `roots`: its path, size and modification
/// time. Build output (`target/`), installed dependencies
/// (`node_modules/`), caches and hidden entries are left out.
pub fn fingerprint(roots: &[PathBuf]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    for root in roots {
        visit(root, &mut hasher);
    }
    hasher.finish()
}

fn visit(path: &Path, hasher: &mut impl Hasher) {
    let Ok(meta) = std::fs::metadata(path) else {
        path.hash(hasher); // gone: that is a change too
        return;
    };
    if meta.is_dir() {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        let mut children: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !crate::runtime::build::is_build_output(&name)
            })
            .map(|e| e.path())
            .collect();
        children.sort();
        for child in children {
            visit(&child, hasher);
        }
    } else {
        path.hash(hasher);
        meta.len().hash(hasher);
        meta.modified().ok().hash(hasher);
    }
}

/// Waits until the files under `roots` differ from `seen`, and then until
/// they stay the same for one poll (an editor's save, a `git checkout`, a
/// build writing many files). Returns the new fingerprint.
pub async fn changed(roots: &[PathBuf], seen: u64) -> u64 {
    let roots = roots.to_vec();
    let print = move || {
        let roots = roots.clone();
        async move {
            tokio::task::spawn_blocking(move || fingerprint(&roots))
                .await
                .unwrap_or(0)
        }
    };
    let mut now = seen;
    while now == seen {
        tokio::time::sleep(POLL).await;
        now = print().await;
    }
    loop {
        tokio::time::sleep(POLL).await;
        let next = print().await;
        if next == now {
            return now;
        }
        now = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_under_a_root_changes_the_fingerprint_and_target_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("lib.rs"), "fn a() {}").unwrap();
        let roots = vec![dir.path().to_owned()];
        let first = fingerprint(&roots);
        assert_eq!(fingerprint(&roots), first, "nothing changed");
        std::fs::create_dir_all(dir.path().join("target/release")).unwrap();
        std::fs::write(dir.path().join("target/release/x.wasm"), "built").unwrap();
        assert_eq!(fingerprint(&roots), first, "build output is not a change");
        std::fs::write(src.join("lib.rs"), "fn a() { 1; }").unwrap();
        let edited = fingerprint(&roots);
        assert_ne!(edited, first);
        std::fs::write(src.join("new.rs"), "").unwrap();
        assert_ne!(fingerprint(&roots), edited, "a new file is a change");
    }
}
