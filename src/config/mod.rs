//! Configuration: pipeline files and the runtime config.
//!
//! Pipelines ([`pipeline`]) say what flows where in terms of buckets and
//! topics; the runtime config ([`runtime`]) binds those names to backends
//! and sets process-wide limits. Both are read with [`reader`], which
//! reports every problem at once with file, line, column and field path.

pub mod pipeline;
pub mod reader;
pub mod runtime;
pub mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pipeline::PipelineConfig;
use reader::{Diagnostic, Document};

/// Looks up `${NAME}` in the process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Expands directories to the `*.toml` files in them (sorted).
pub fn pipeline_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Vec<Diagnostic>> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let problem = |message: String| Diagnostic::whole_file(path, message);
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<_> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                        .collect();
                    found.sort();
                    files.extend(found);
                }
                Err(e) => problems.push(problem(format!("cannot read directory: {e}"))),
            }
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            problems.push(problem("no such file or directory".to_owned()));
        }
    }
    if problems.is_empty() {
        Ok(files)
    } else {
        Err(problems)
    }
}

/// Reads one pipeline file; every problem in it is in the error.
pub fn read_pipeline(
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PipelineConfig, Vec<Diagnostic>> {
    let text = reader::read_text(file)?;
    parse_pipeline(file, &text, env)
}

/// Reads a pipeline from its text (`file` names it in diagnostics and
/// anchors relative paths).
pub fn parse_pipeline(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PipelineConfig, Vec<Diagnostic>> {
    let doc = Document::new(file, text, env);
    let root = doc.parse();
    // After a syntax error the structure is a guess: report only that.
    if doc.has_errors() {
        return Err(doc.into_diagnostics());
    }
    let config = pipeline::read(&doc, doc.root(&root));
    let mut diagnostics = doc.into_diagnostics();
    diagnostics.sort_by_key(|d| (d.line, d.column));
    match config {
        Some(config) if diagnostics.is_empty() => Ok(config),
        _ => Err(diagnostics),
    }
}

/// Reads every pipeline under `paths`, reporting all problems of all files
/// (and pipelines sharing a name) together.
pub fn load_pipelines(
    paths: &[PathBuf],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<PipelineConfig>, Vec<Diagnostic>> {
    let files = pipeline_files(paths)?;
    let mut pipelines = Vec::new();
    let mut problems = Vec::new();
    for file in &files {
        match read_pipeline(file, env) {
            Ok(config) => pipelines.push(config),
            Err(diagnostics) => problems.extend(diagnostics),
        }
    }
    let mut seen: BTreeMap<&str, &Path> = BTreeMap::new();
    for config in &pipelines {
        if let Some(first) = seen.insert(&config.name, &config.file) {
            problems.push(Diagnostic {
                file: config.file.clone(),
                line: 1,
                column: 1,
                path: "name".to_owned(),
                message: format!(
                    "pipeline name {:?} is also used by {}",
                    config.name,
                    first.display()
                ),
            });
        }
    }
    if files.is_empty() && problems.is_empty() {
        problems.push(Diagnostic {
            file: paths.first().cloned().unwrap_or_default(),
            line: 1,
            column: 1,
            path: String::new(),
            message: "no pipeline files (*.toml) found".to_owned(),
        });
    }
    if problems.is_empty() {
        Ok(pipelines)
    } else {
        Err(problems)
    }
}

/// What the pipelines ask of the runtime config that it does not give: a
/// database source's `database` it does not bind, a route at `/` where it
/// serves the dashboard.
pub fn unbound_names(
    runtime: &runtime::RuntimeConfig,
    pipelines: &[PipelineConfig],
) -> Vec<Diagnostic> {
    let problem = |p: &PipelineConfig, path: &str, message: String| Diagnostic {
        file: p.file.clone(),
        line: 1,
        column: 1,
        path: path.to_owned(),
        message,
    };
    let mut problems = Vec::new();
    for p in pipelines {
        match &p.source {
            crate::triggers::TriggerConfig::Database(source)
                if !runtime.databases.contains_key(&source.database) =>
            {
                let known: Vec<&str> = runtime.databases.keys().map(String::as_str).collect();
                problems.push(problem(p, "source.database", format!(
                    "database {:?} is not in the runtime config (it has {}): add [databases.{}] url = \"postgres://…\" to runnel.toml",
                    source.database,
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") },
                    source.database
                )));
            }
            crate::triggers::TriggerConfig::Http(source)
                if runtime.http.dashboard
                    && source.listen.is_none()
                    && source.routes.iter().any(|r| r.pattern == "/") =>
            {
                problems.push(problem(p, "source.routes", "route \"/\" is where runnel serves its dashboard: set http.dashboard = false in runnel.toml to give it to this function, or give the pipeline a listener of its own (source.listen)".to_owned()));
            }
            _ => {}
        }
    }
    problems
}
