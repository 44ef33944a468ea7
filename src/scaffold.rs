//! `runnel new <rust|python|js> <name>`: a function and a pipeline for it,
//! with a sample event, so that `runnel invoke` and `runnel up` work at
//! once. The templates are in `templates/`, embedded in the binary; each
//! language's SDK (and, for Rust, the WIT) is copied in beside the function
//! so an editor and the language's own test runner find it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::runtime::build::WIT;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Rust,
    Python,
    Js,
}

/// What the pipeline's source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// Objects uploaded to the bucket `<name>-uploads`.
    Storage,
    /// Messages on the topic `<name>-requests`.
    Topic,
    /// `POST /<name>`, queued as events (`mode = "async"`).
    Http,
}

/// The files of each language's function, as (path, template).
fn function_files(language: Language) -> Vec<(&'static str, &'static str)> {
    match language {
        Language::Rust => vec![
            ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
            ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
            ("wit/function.wit", WIT),
        ],
        Language::Python => vec![
            ("app.py", include_str!("../templates/python/app.py")),
            (
                "test_app.py",
                include_str!("../templates/python/test_app.py"),
            ),
            (
                "runnel.py",
                include_str!("../functions/sdk-python/runnel.py"),
            ),
        ],
        Language::Js => vec![
            ("package.json", include_str!("../templates/js/package.json")),
            ("index.js", include_str!("../templates/js/index.js")),
            (
                "index.test.js",
                include_str!("../templates/js/index.test.js"),
            ),
            (
                "runnel/package.json",
                include_str!("../functions/sdk-js/package.json"),
            ),
            (
                "runnel/runnel.js",
                include_str!("../functions/sdk-js/runnel.js"),
            ),
        ],
    }
}

const SAMPLE: &str = "{\"name\": \"Dora\"}\n";

/// What was created, for the command to print.
#[derive(Debug)]
pub struct Created {
    pub function: PathBuf,
    pub pipeline: PathBuf,
    pub sample: PathBuf,
    /// The commands to try it, one per line.
    pub next: String,
}

/// Creates `functions/<name>/` and `pipelines/<name>.toml` under `root`;
/// nothing is written when any of it exists.
pub fn create(
    root: &Path,
    language: Language,
    name: &str,
    source: Source,
) -> anyhow::Result<Created> {
    check_name(name)?;
    let function = root.join("functions").join(name);
    let pipeline = root.join("pipelines").join(format!("{name}.toml"));
    for path in [&function, &pipeline] {
        if path.exists() {
            bail!(
                "{} already exists; runnel new writes over nothing",
                path.display()
            );
        }
    }
    let fill = |template: &str| template.replace("{{name}}", name);
    for (file, template) in function_files(language) {
        write(&function.join(file), &fill(template))?;
    }
    let sample = function.join("sample.json");
    write(&sample, SAMPLE)?;
    write(&pipeline, &pipeline_file(language, name, source))?;

    let sample_arg = format!("functions/{name}/sample.json");
    let pipeline_arg = format!("pipelines/{name}.toml");
    let (invoke, send) = match source {
        Source::Storage => (
            format!("runnel invoke {pipeline_arg} --event {sample_arg}"),
            format!(
                "curl -X PUT --data-binary @{sample_arg} http://127.0.0.1:8080/v1/objects/{name}-uploads/sample.json"
            ),
        ),
        Source::Topic => (
            format!("runnel invoke {pipeline_arg} --event {sample_arg}"),
            format!(
                "curl -X POST --data-binary @{sample_arg} http://127.0.0.1:8080/v1/topics/{name}-requests"
            ),
        ),
        Source::Http => (
            format!("runnel invoke {pipeline_arg} --request \"POST /{name}\" --event {sample_arg}"),
            format!("curl -X POST --data-binary @{sample_arg} http://127.0.0.1:8080/{name}"),
        ),
    };
    let next =
        format!("{invoke}\nrunnel up\n{send}\ncurl http://127.0.0.1:8080/v1/topics/{name}-results");
    Ok(Created {
        function,
        pipeline,
        sample,
        next,
    })
}

fn pipeline_file(language: Language, name: &str, source: Source) -> String {
    let (language_name, memory) = match language {
        Language::Rust => ("rust", "32MiB"),
        // An interpreter's heap and the snapshot of the imported modules.
        Language::Python | Language::Js => (
            if language == Language::Python {
                "python"
            } else {
                "js"
            },
            "128MiB",
        ),
    };
    let source = match source {
        Source::Storage => format!(
            "# Objects uploaded to the bucket (PUT /v1/objects/{name}-uploads/<key>).\ntype = \"storage\"\nbucket = \"{name}-uploads\""
        ),
        Source::Topic => format!(
            "# Messages on the topic (POST /v1/topics/{name}-requests).\ntype = \"topic\"\ntopic = \"{name}-requests\""
        ),
        Source::Http => format!(
            "# POST /{name}: each request is queued as an event and answered 202.\ntype = \"http\"\nmode = \"async\"\nroutes = [\"/{name}\"]\nmethods = [\"POST\"]\nmax_body_size = \"64KiB\""
        ),
    };
    format!(
        "# Created by `runnel new {language_name} {name}`: greets by name.\nname = \"{name}\"\ndescription = \"Greets by name\"\n\n[source]\n{source}\n\n[function]\npath = \"../functions/{name}\"\nmemory_limit = \"{memory}\"\ntimeout = \"5s\"\n\n[sinks.results]\ntype = \"topic\"\ntopic = \"{name}-results\"\n\n# Events the function refuses, or that keep failing, with the reason.\n[dead_letter]\ntype = \"storage\"\nbucket = \"{name}-dead-letters\"\n\n[retry]\nmax_attempts = 3\n"
    )
}

/// A name is a function's directory, a pipeline's name and the start of
/// its bucket and topic names: lowercase letters, digits and `-`.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    // Names cargo or npm refuse for a package, or that shadow runnel's SDK.
    if matches!(
        name,
        "runnel" | "test" | "std" | "core" | "alloc" | "proc-macro" | "self"
    ) {
        bail!("name {name:?} is taken (by runnel's SDK, or by cargo); choose another");
    }
    if !ok {
        bail!(
            "name {name:?}: use 1 to 40 lowercase letters, digits and '-', starting with a letter and not ending with '-' (it names the function's directory, the pipeline, and its bucket and topics)"
        );
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["hello", "a", "resize-2"] {
            check_name(good).unwrap();
        }
        for bad in ["", "Hello", "2fast", "a_b", "a-", "a/b", &"x".repeat(41)] {
            assert!(
                check_name(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("lowercase"),
                "{bad}"
            );
        }
    }

    /// Nothing is written over: an existing function directory or
    /// pipeline file stops it before any file is made.
    #[test]
    fn nothing_is_written_over() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("pipelines")).unwrap();
        std::fs::write(root.path().join("pipelines/hello.toml"), "mine").unwrap();
        let err = create(root.path(), Language::Python, "hello", Source::Topic).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert!(!root.path().join("functions/hello").exists());
        assert_eq!(
            std::fs::read_to_string(root.path().join("pipelines/hello.toml")).unwrap(),
            "mine"
        );
    }

    /// Every template and pipeline reads as a valid pipeline file.
    #[test]
    fn each_language_and_source_makes_a_valid_pipeline() {
        for language in [Language::Rust, Language::Python, Language::Js] {
            for source in [Source::Storage, Source::Topic, Source::Http] {
                let root = tempfile::tempdir().unwrap();
                let created = create(root.path(), language, "hello", source).unwrap();
                let loaded =
                    crate::config::load_pipelines(std::slice::from_ref(&created.pipeline), &|_| {
                        None
                    });
                assert!(
                    loaded.is_ok(),
                    "{language:?} {source:?}: {:?}",
                    loaded.err()
                );
                let text = std::fs::read_to_string(&created.pipeline).unwrap();
                assert!(text.contains("path = \"../functions/hello\""), "{text}");
                assert!(!text.contains("{{"), "{text}");
                for (file, _) in function_files(language) {
                    let body = std::fs::read_to_string(created.function.join(file)).unwrap();
                    assert!(!body.contains("{{name}}"), "{file}");
                }
            }
        }
    }
}
