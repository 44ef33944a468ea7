//! Building functions from their sources, so `runnel up` and `runnel
//! invoke` need no hand step: a pipeline's `function.path` may name a Rust
//! crate, a Python project or a JavaScript project, and each start builds
//! it when its sources changed.
//!
//! - Rust (`Cargo.toml`): cargo, which knows itself what is stale ([`rust`]).
//! - Python (`app.py`): componentize-py ([`python`]).
//! - JavaScript (`package.json`): jco componentize ([`javascript`]).
//!
//! Python and JavaScript builds are cached under the functions' cache
//! directory by a digest of everything they are built from (the project's
//! files, runnel's WIT and language SDK, the tool's version), so an
//! unchanged project is not rebuilt, and a project copied elsewhere reuses
//! its build. Their tools write progress of their own only at the end, so
//! runnel says what it is building and, every few seconds, that it still is.

mod javascript;
mod python;
mod rust;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use javascript::NO_HTTP as JS_NO_HTTP;
pub use rust::{TARGET, build_crate};

/// runnel's WIT, the contract every guest is built against; written next
/// to a Python or JavaScript build, so a project needs no copy of it.
pub const WIT: &str = include_str!("../../../functions/wit/function.wit");

/// The world a function is built against: what its pipeline grants
/// decides what it may import.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum World {
    /// `function`: runnel's own interfaces.
    Function,
    /// `function-with-http`: and `wasi:http`'s outgoing handler, for a
    /// function granted `[function.capabilities] http`.
    FunctionWithHttp,
}

impl World {
    pub fn of(capabilities: &super::Capabilities) -> World {
        match capabilities.http {
            Some(_) => World::FunctionWithHttp,
            None => World::Function,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            World::Function => "function",
            World::FunctionWithHttp => "function-with-http",
        }
    }
}

/// The world `function-with-http` and the WASI 0.2.0 packages it uses, as
/// (path in a WIT directory, text): written beside `function.wit` for a
/// build granted outbound HTTP.
const HTTP_WIT: [(&str, &str); 8] = [
    ("http.wit", include_str!("../../../functions/wit/http.wit")),
    (
        "deps/http/package.wit",
        include_str!("../../../functions/wit/deps/http/package.wit"),
    ),
    (
        "deps/http/types.wit",
        include_str!("../../../functions/wit/deps/http/types.wit"),
    ),
    (
        "deps/http/handler.wit",
        include_str!("../../../functions/wit/deps/http/handler.wit"),
    ),
    (
        "deps/io/error.wit",
        include_str!("../../../functions/wit/deps/io/error.wit"),
    ),
    (
        "deps/io/poll.wit",
        include_str!("../../../functions/wit/deps/io/poll.wit"),
    ),
    (
        "deps/io/streams.wit",
        include_str!("../../../functions/wit/deps/io/streams.wit"),
    ),
    (
        "deps/clocks/monotonic-clock.wit",
        include_str!("../../../functions/wit/deps/clocks/monotonic-clock.wit"),
    ),
];

/// The language a function's project is written in, told by its manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    /// A crate: `Cargo.toml`.
    Rust,
    /// `app.py`, whose `handle(ctx, event)` is the function.
    Python,
    /// `package.json`, whose `main` module exports `handle(ctx, event)`.
    JavaScript,
}

impl Language {
    /// The file that marks a project of each language.
    const MARKERS: [(&'static str, Language); 3] = [
        ("Cargo.toml", Language::Rust),
        ("app.py", Language::Python),
        ("package.json", Language::JavaScript),
    ];

    /// The language of the project in `dir`; an error names what was
    /// looked for, or the markers of more than one language. A crate may
    /// carry a `package.json` (for a formatter, say): `Cargo.toml` wins.
    pub fn detect(dir: &Path) -> Result<Language, String> {
        if dir.join("Cargo.toml").is_file() {
            return Ok(Language::Rust);
        }
        let found: Vec<_> = Self::MARKERS
            .iter()
            .filter(|(marker, _)| dir.join(marker).is_file())
            .collect();
        match found.as_slice() {
            [(_, language)] => Ok(*language),
            [] => Err(format!(
                "{} is neither a .wasm component nor a function project (a directory with a Cargo.toml, an app.py or a package.json)",
                dir.display()
            )),
            several => Err(format!(
                "{} holds the projects of more than one language ({}); keep one per directory",
                dir.display(),
                several
                    .iter()
                    .map(|(marker, _)| *marker)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::Python => "Python",
            Language::JavaScript => "JavaScript",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("running {tool} to build {dir}: {source} (is {tool} installed and on PATH?)")]
    Spawn {
        tool: String,
        dir: String,
        source: std::io::Error,
    },
    #[error(
        "building the {language} function at {dir} needs {tool}, which was not found: {install}"
    )]
    MissingTool {
        language: &'static str,
        dir: String,
        tool: &'static str,
        install: String,
    },
    #[error("{tool} failed to build {dir} ({status}); its messages are above{hint}")]
    Failed {
        tool: &'static str,
        dir: String,
        status: String,
        hint: String,
    },
    #[error("{dir}: {reason}")]
    Project { dir: String, reason: String },
    #[error("cargo built {crate_dir} but produced no .wasm component (is it a `cdylib` crate?)")]
    NoComponent { crate_dir: String },
    #[error(
        "the Rust toolchain at {sysroot} has no {TARGET} target, needed to build {crate_dir}: {reason}"
    )]
    MissingTarget {
        crate_dir: String,
        sysroot: String,
        reason: String,
    },
    #[error("writing the build of {dir} under {cache}: {source}")]
    Cache {
        dir: String,
        cache: String,
        source: std::io::Error,
    },
}

/// Builds the project in `dir` against `world` and returns the path of its
/// component. Python and JavaScript builds are kept under
/// `cache_dir/builds`. A Rust crate picks its imports itself (runnel-sdk
/// imports wasi:http only when a function sends a request).
pub fn build(
    dir: &Path,
    language: Language,
    world: World,
    cache_dir: &Path,
) -> Result<PathBuf, BuildError> {
    // Absolute, because the tools run in the project's directory.
    let absolute = |path: &Path| {
        std::path::absolute(path).map_err(|source| BuildError::Cache {
            dir: dir.display().to_string(),
            cache: path.display().to_string(),
            source,
        })
    };
    let (dir, cache_dir) = (&absolute(dir)?, &absolute(cache_dir)?);
    match language {
        Language::Rust => rust::build_crate(dir),
        Language::Python => python::build(dir, world, cache_dir),
        Language::JavaScript => match world {
            World::Function => javascript::build(dir, cache_dir),
            World::FunctionWithHttp => Err(BuildError::Project {
                dir: dir.display().to_string(),
                reason: javascript::NO_HTTP.into(),
            }),
        },
    }
}

/// Where a Python or JavaScript build stands before its tool runs.
enum Start {
    /// Built before, from the same sources, glue and tool.
    Cached(PathBuf),
    /// To build in `scratch` (its glue written), and to keep as `output`.
    Build {
        scratch: Scratch,
        output: PathBuf,
        version: String,
    },
}

/// Reads `tool`'s version (a warning when it is not `tested`, the one
/// runnel is tested with) and looks for the build of `dir` in the cache,
/// by a digest of its sources, the version, `glue` (runnel's files the
/// build adds: written into a fresh scratch directory when there is no
/// such build) and `templates` (glue written from them later).
fn start(
    dir: &Path,
    cache_dir: &Path,
    tool: &Path,
    tested: &str,
    glue: &[(&str, &str)],
    templates: &[&str],
) -> Result<Start, BuildError> {
    let version = version_of(tool).unwrap_or_default();
    if version.split_whitespace().last() != Some(tested) {
        tracing::warn!(
            function_dir = %dir.display(),
            tool = %tool.display(),
            %version,
            "runnel is tested with version {tested} of this tool"
        );
    }
    let mut inputs: Vec<&[u8]> = vec![version.as_bytes()];
    for (name, text) in glue {
        inputs.extend([name.as_bytes(), text.as_bytes()]);
    }
    inputs.extend(templates.iter().map(|t| t.as_bytes()));
    let output = cached_build(dir, cache_dir, &inputs)?;
    if output.is_file() {
        return Ok(Start::Cached(output));
    }
    let scratch = Scratch::new(&output, dir)?;
    scratch.write(glue, dir)?;
    Ok(Start::Build {
        scratch,
        output,
        version,
    })
}

/// Where a cached build of `dir` goes, named by the project and a digest
/// of everything the build reads (`inputs`: the tool's version, the glue).
fn cached_build(dir: &Path, cache_dir: &Path, inputs: &[&[u8]]) -> Result<PathBuf, BuildError> {
    use md5::Digest as _;
    let mut digest = md5::Md5::new();
    digest.update(WIT);
    for input in inputs {
        digest.update((input.len() as u64).to_le_bytes());
        digest.update(input);
    }
    hash_tree(dir, dir, &mut digest).map_err(|source| BuildError::Project {
        dir: dir.display().to_string(),
        reason: format!("reading its files: {source}"),
    })?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "function".into());
    Ok(cache_dir.join("builds").join(format!(
        "{name}-{}.wasm",
        &hex::encode(digest.finalize())[..16]
    )))
}

/// Entries a build never reads as sources: installed dependencies (their
/// lockfile is read instead), virtual environments, caches, build output,
/// hidden files.
pub fn is_build_output(name: &str) -> bool {
    name.starts_with('.') || matches!(name, "target" | "node_modules" | "__pycache__" | "venv")
}

/// Feeds every file under `dir` (its path relative to `root`, its bytes)
/// to `digest`, in a stable order. Symbolic links are followed (a
/// directory reached twice, as through a link to `.`, is read once); an
/// error names the file.
fn hash_tree(root: &Path, dir: &Path, digest: &mut md5::Md5) -> std::io::Result<()> {
    hash_dir(root, dir, digest, &mut std::collections::HashSet::new())
}

fn hash_dir(
    root: &Path,
    dir: &Path,
    digest: &mut md5::Md5,
    seen: &mut std::collections::HashSet<PathBuf>,
) -> std::io::Result<()> {
    use md5::Digest as _;
    let named = |path: &Path, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
    };
    if !seen.insert(dir.canonicalize().map_err(|e| named(dir, e))?) {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| named(dir, e))?
        .filter_map(Result::ok)
        .filter(|e| !is_build_output(&e.file_name().to_string_lossy()))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // a dangling link: nothing to build from
        };
        if meta.is_dir() {
            hash_dir(root, &path, digest, seen)?;
        } else {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let bytes = std::fs::read(&path).map_err(|e| named(&path, e))?;
            digest.update(relative.to_string_lossy().as_bytes());
            digest.update((bytes.len() as u64).to_le_bytes());
            digest.update(&bytes);
        }
    }
    Ok(())
}

/// A build's scratch directory beside its cached result, renamed into
/// place only when the build succeeded, so a failed or interrupted build
/// (or two processes building at once) never leaves a partial component.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(output: &Path, project: &Path) -> Result<Self, BuildError> {
        let dir = output.with_extension(format!("build-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| BuildError::Cache {
            dir: project.display().to_string(),
            cache: dir.display().to_string(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// Writes `files` (name, text) into the scratch directory.
    fn write(&self, files: &[(&str, &str)], project: &Path) -> Result<(), BuildError> {
        for (name, text) in files {
            let path = self.dir.join(name);
            let parent = path.parent().unwrap_or(&self.dir);
            (std::fs::create_dir_all(parent).and_then(|()| std::fs::write(&path, text))).map_err(
                |source| BuildError::Cache {
                    dir: project.display().to_string(),
                    cache: self.dir.display().to_string(),
                    source,
                },
            )?;
        }
        Ok(())
    }

    /// Moves the component the tool wrote to `built` into place as `output`.
    fn finish(self, built: &Path, output: &Path, project: &Path) -> Result<PathBuf, BuildError> {
        std::fs::rename(built, output).map_err(|source| BuildError::Cache {
            dir: project.display().to_string(),
            cache: output.display().to_string(),
            source,
        })?;
        Ok(output.to_owned())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command` (the tool's output on our stderr), saying what is built
/// before and, every `PROGRESS` while it runs, how long it has taken.
fn run_with_progress(
    mut command: Command,
    tool: &'static str,
    dir: &Path,
    what: &str,
    hint: &str,
) -> Result<(), BuildError> {
    const PROGRESS: Duration = Duration::from_secs(5);
    let shown = dir.display().to_string();
    tracing::info!(function_dir = %shown, "{what}");
    let started = Instant::now();
    let mut child = command.spawn().map_err(|source| BuildError::Spawn {
        tool: tool.into(),
        dir: shown.clone(),
        source,
    })?;
    let mut next = PROGRESS;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                return Err(BuildError::Spawn {
                    tool: tool.into(),
                    dir: shown,
                    source,
                });
            }
        }
        if started.elapsed() >= next {
            tracing::info!(function_dir = %shown, elapsed_s = next.as_secs(), "still building with {tool}");
            next += PROGRESS;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        return Err(BuildError::Failed {
            tool,
            dir: shown,
            status: status.to_string(),
            hint: hint.to_owned(),
        });
    }
    tracing::info!(
        function_dir = %shown,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "built with {tool}"
    );
    Ok(())
}

/// What `program --version` prints, trimmed; `None` when it cannot run.
fn version_of(program: &Path) -> Option<String> {
    let output = Command::new(program).arg("--version").output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_is_told_by_its_one_marker() {
        let dir = tempfile::tempdir().unwrap();
        let err = Language::detect(dir.path()).unwrap_err();
        assert!(
            err.contains("a Cargo.toml, an app.py or a package.json"),
            "{err}"
        );
        std::fs::write(dir.path().join("app.py"), "").unwrap();
        assert_eq!(Language::detect(dir.path()), Ok(Language::Python));
        std::fs::write(dir.path().join("package.json"), "{}").unwrap();
        let err = Language::detect(dir.path()).unwrap_err();
        assert!(
            err.contains("more than one language (app.py, package.json)"),
            "{err}"
        );
    }

    /// The digest follows the sources' bytes, not installed dependencies
    /// or caches, nor where the project lives.
    #[test]
    fn a_build_is_named_by_its_sources() {
        let (a, b, cache) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            Path::new("/cache"),
        );
        for dir in [a.path(), b.path()] {
            std::fs::create_dir_all(dir.join("fn/lib")).unwrap();
            std::fs::write(dir.join("fn/app.py"), "x = 1").unwrap();
            std::fs::write(dir.join("fn/lib/util.py"), "y = 2").unwrap();
        }
        let named = |dir: &Path| cached_build(&dir.join("fn"), cache, &[b"tool 1"]).unwrap();
        let first = named(a.path());
        assert!(first.starts_with("/cache/builds"), "{}", first.display());
        assert_eq!(first, named(b.path()), "the same sources elsewhere");
        std::fs::create_dir_all(a.path().join("fn/__pycache__")).unwrap();
        std::fs::write(a.path().join("fn/__pycache__/app.pyc"), "cache").unwrap();
        std::fs::create_dir_all(a.path().join("fn/node_modules/x")).unwrap();
        std::fs::write(a.path().join("fn/node_modules/x/i.js"), "dep").unwrap();
        assert_eq!(
            first,
            named(a.path()),
            "caches and dependencies are not sources"
        );
        std::fs::write(a.path().join("fn/lib/util.py"), "y = 3").unwrap();
        assert_ne!(first, named(a.path()), "a changed source");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(".", a.path().join("fn/lib/loop")).unwrap();
            std::os::unix::fs::symlink("gone", a.path().join("fn/dangling")).unwrap();
            named(a.path());
        }
        let other_tool = cached_build(&b.path().join("fn"), cache, &[b"tool 2"]).unwrap();
        assert_ne!(named(b.path()), other_tool, "another tool version");
    }
}
