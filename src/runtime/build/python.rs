//! Building Python functions with componentize-py: a project directory
//! with an `app.py` defining `handle(ctx, event)`.
//!
//! runnel writes its WIT, its Python SDK (`runnel.py`) and an entry module
//! into a scratch directory and asks componentize-py to build the entry,
//! which imports `app`: the interpreter and the project's modules (pure
//! Python packages a project needs are kept in its directory) are
//! snapshotted into one component after the modules are imported, so an
//! invocation starts no interpreter.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{BuildError, HTTP_WIT, Start, World, find_on_path, run_with_progress, start};

/// The version runnel is built and tested with.
pub const TOOL_VERSION: &str = "0.25.1";

const SDK: &str = include_str!("../../../functions/sdk-python/runnel.py");

/// The module componentize-py builds: the WIT export, handed to `app.handle`.
const ENTRY: &str = r#"import wit_world
import runnel
import app

if not callable(getattr(app, "handle", None)):
    raise RuntimeError("app.py defines no handle(ctx, event) function")


class WitWorld(wit_world.WitWorld):
    def handle(self, ctx, event):
        return runnel._handle(app.handle, ctx, event)
"#;

pub fn build(dir: &Path, world: World, cache_dir: &Path) -> Result<PathBuf, BuildError> {
    let tool = find_tool(dir)?;
    let mut glue = vec![("runnel.py", SDK), ("runnel_entry.py", ENTRY)];
    // The `function` world's WIT is one file, written as it always was (a
    // build cached before is found again); granted HTTP, a directory.
    let http_wit: Vec<(String, &str)> = (HTTP_WIT.iter())
        .map(|(path, text)| (format!("wit/{path}"), *text))
        .collect();
    let wit_path = match world {
        World::Function => {
            glue.insert(0, ("function.wit", super::WIT));
            "function.wit"
        }
        World::FunctionWithHttp => {
            glue.insert(0, ("wit/function.wit", super::WIT));
            glue.extend(http_wit.iter().map(|(path, text)| (path.as_str(), *text)));
            "wit"
        }
    };
    let (scratch, output) = match start(dir, cache_dir, &tool, TOOL_VERSION, &glue, &[])? {
        Start::Cached(output) => return Ok(output),
        Start::Build {
            scratch, output, ..
        } => (scratch, output),
    };
    let built = scratch.dir.join("function.wasm");
    let mut command = Command::new(&tool);
    command
        .arg("--wit-path")
        .arg(scratch.dir.join(wit_path))
        .args(["--world", world.name(), "componentize", "runnel_entry"])
        .arg("--python-path")
        .arg(&scratch.dir)
        .arg("--python-path")
        .arg(dir);
    command
        .arg("--output")
        .arg(&built)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    run_with_progress(
        command,
        "componentize-py",
        dir,
        "building a Python function with componentize-py (10-20 s; cached after)",
        "",
    )?;
    scratch.finish(&built, &output, dir)
}

/// componentize-py from the project's `.venv`, else from PATH.
fn find_tool(dir: &Path) -> Result<PathBuf, BuildError> {
    let local = dir.join(".venv/bin/componentize-py");
    if local.is_file() {
        return Ok(local);
    }
    find_on_path("componentize-py").ok_or_else(|| BuildError::MissingTool {
        language: "Python",
        dir: dir.display().to_string(),
        tool: "componentize-py",
        install: format!(
            "install it with `pip install componentize-py=={TOOL_VERSION}` (on PATH, or in the project's .venv)"
        ),
    })
}
