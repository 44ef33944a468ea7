//! Building JavaScript functions with jco componentize (ComponentizeJS,
//! StarlingMonkey): a project directory with a `package.json` whose `main`
//! module (default `index.js`) exports `handle(ctx, event)`.
//!
//! jco comes from the project's own `node_modules` (installed by npm from
//! its lockfile the first time, as cargo fetches a crate's dependencies),
//! else from PATH. runnel writes its WIT, its SDK (`runnel.js`) and an entry
//! module into a scratch directory; jco bundles the entry with the project's
//! module and npm dependencies (`runnel` resolved to runnel's SDK) and
//! snapshots the engine after the modules ran. WASI is disabled (`--disable
//! all`): jco's defaults add `fetch` over `wasi:http`, which a synchronous
//! `handle` cannot wait for (so a JavaScript function cannot be granted
//! outbound HTTP yet: [`NO_HTTP`]), stdio and real clocks.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{BuildError, Start, find_on_path, run_with_progress, start};

/// The versions runnel is built and tested with: jco 1.35.0 fails to read
/// any WIT path ("failed to get path metadata: No such file or directory
/// (os error 44)", in its check for older wasi:http worlds).
pub const JCO_VERSION: &str = "1.34.0";
pub const COMPONENTIZE_JS_VERSION: &str = "0.22.0";

const SDK: &str = include_str!("../../../functions/sdk-js/runnel.js");

/// Why a JavaScript function cannot be granted outbound HTTP yet.
pub const NO_HTTP: &str = "a JavaScript function cannot be granted outbound HTTP yet: jco's `fetch` is asynchronous and a function's `handle` is not (ComponentizeJS 0.22 cannot wait for a promise in a synchronous export); write it in Rust (runnel-sdk's `http`) or Python (`runnel.http`)";

/// The module jco builds: the WIT export, handed to the project's `handle`.
/// `MAIN` is replaced by the main module's path as a JS string.
const ENTRY: &str = r#"import { log } from "runnel:function/log@0.1.0";
import { get } from "runnel:function/variables@0.1.0";
import * as kv from "runnel:function/kv@0.1.0";
import { _handle, _useImports } from "runnel";
import * as app from MAIN;

_useImports(log, get, kv);
if (typeof app.handle !== "function") {
  throw new Error(`${MAIN} exports no handle(ctx, event) function`);
}

export function handle(ctx, event) {
  return _handle(app.handle, ctx, event);
}
"#;

/// The bundler's configuration: `runnel` is runnel's SDK (`SDK` is replaced
/// by its path as a JS string); the WIT's imports are the component's, not
/// modules to bundle.
const BUNDLE_CONFIG: &str =
    "export default { external: [/^runnel:/, /^wasi:/], resolve: { alias: { runnel: SDK } } };\n";

pub fn build(dir: &Path, cache_dir: &Path) -> Result<PathBuf, BuildError> {
    let main = main_module(dir)?;
    let jco = find_jco(dir)?;
    let glue = [("function.wit", super::WIT), ("runnel.js", SDK)];
    let (scratch, output, version) = match start(
        dir,
        cache_dir,
        &jco,
        JCO_VERSION,
        &glue,
        &[ENTRY, BUNDLE_CONFIG],
    )? {
        Start::Cached(output) => return Ok(output),
        Start::Build {
            scratch,
            output,
            version,
        } => (scratch, output, version),
    };
    let sdk = scratch.dir.join("runnel.js");
    let main_literal = serde_json::to_string(&main.to_string_lossy()).expect("a string");
    let bundle_config = BUNDLE_CONFIG.replace(
        "SDK",
        &serde_json::to_string(&sdk.to_string_lossy()).expect("a string"),
    );
    scratch.write(
        &[
            ("entry.js", &ENTRY.replace("MAIN", &main_literal)),
            ("bundle.config.mjs", &bundle_config),
        ],
        dir,
    )?;
    let built = scratch.dir.join("function.wasm");
    let mut command = Command::new(&jco);
    command
        .arg("componentize")
        .arg(scratch.dir.join("entry.js"))
        .arg("--wit")
        .arg(scratch.dir.join("function.wit"))
        .args(["--world-name", "function", "--disable", "all", "--bundle"])
        .arg("--bundle-config")
        .arg(scratch.dir.join("bundle.config.mjs"))
        .arg("--out")
        .arg(&built)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let hint = if version == JCO_VERSION {
        String::new()
    } else {
        format!(" (runnel is tested with jco {JCO_VERSION}; this is {version:?})")
    };
    run_with_progress(
        command,
        "jco",
        dir,
        "building a JavaScript function with jco componentize (10-20 s; cached after)",
        &hint,
    )?;
    scratch.finish(&built, &output, dir)
}

/// The project's main module: package.json's `main`, else `index.js`.
fn main_module(dir: &Path) -> Result<PathBuf, BuildError> {
    let project = |reason: String| BuildError::Project {
        dir: dir.display().to_string(),
        reason,
    };
    let manifest = std::fs::read(dir.join("package.json"))
        .map_err(|e| project(format!("reading package.json: {e}")))?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)
        .map_err(|e| project(format!("package.json is not JSON: {e}")))?;
    let main = match &manifest["main"] {
        serde_json::Value::Null => "index.js",
        serde_json::Value::String(main) => main,
        other => {
            return Err(project(format!(
                "package.json's `main` is {other}, not a path"
            )));
        }
    };
    let path = dir.join(main);
    if !path.is_file() {
        return Err(project(format!(
            "package.json's main module {main} does not exist (it exports the function's handle(ctx, event))"
        )));
    }
    path.canonicalize()
        .map_err(|e| project(format!("reading {main}: {e}")))
}

/// jco from the project's `node_modules` (installing the project's
/// dependencies first when it declares jco and they are missing), else
/// from PATH.
fn find_jco(dir: &Path) -> Result<PathBuf, BuildError> {
    let local = dir.join("node_modules/.bin/jco");
    let manifest = std::fs::read_to_string(dir.join("package.json")).unwrap_or_default();
    let declared = manifest.contains("\"@bytecodealliance/jco\"");
    if local.is_file() && !(declared && stale_dependencies(dir)) {
        return Ok(local);
    }
    if declared {
        // Processes starting at once take turns: two npms installing into
        // one node_modules collide.
        let lock = std::fs::File::create(std::env::temp_dir().join(format!(
            "runnel-npm-{}.lock",
            hex::encode(&<md5::Md5 as md5::Digest>::digest(dir.to_string_lossy().as_bytes())[..8])
        )))
        .and_then(|file| file.lock().map(|()| file));
        if let Err(error) = &lock {
            tracing::warn!(%error, "installing without a lock: another runnel may install at once");
        }
        if !local.is_file() || stale_dependencies(dir) {
            install_dependencies(dir)?;
        }
        drop(lock);
        if local.is_file() {
            return Ok(local);
        }
    }
    find_on_path("jco").ok_or_else(|| BuildError::MissingTool {
        language: "JavaScript",
        dir: dir.display().to_string(),
        tool: "jco",
        install: format!(
            "add it to the project with `npm install --save-dev @bytecodealliance/jco@{JCO_VERSION} @bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION}`"
        ),
    })
}

/// Whether the project's lockfile changed since its dependencies were
/// installed (npm writes `node_modules/.package-lock.json` as it installs).
fn stale_dependencies(dir: &Path) -> bool {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    match (
        modified(&dir.join("package-lock.json")),
        modified(&dir.join("node_modules/.package-lock.json")),
    ) {
        (Some(lockfile), Some(installed)) => lockfile > installed,
        _ => false,
    }
}

/// `npm ci` (or `npm install` without a lockfile) in the project.
fn install_dependencies(dir: &Path) -> Result<(), BuildError> {
    let Some(npm) = find_on_path("npm") else {
        return Err(BuildError::MissingTool {
            language: "JavaScript",
            dir: dir.display().to_string(),
            tool: "npm",
            install: "install Node.js 18 or later, with npm, to install the project's dependencies (jco among them)".into(),
        });
    };
    let verb = if dir.join("package-lock.json").is_file() {
        "ci"
    } else {
        "install"
    };
    let mut command = Command::new(npm);
    command
        .args([verb, "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    run_with_progress(
        command,
        "npm",
        dir,
        &format!("installing the JavaScript function's dependencies (npm {verb}; once)"),
        "",
    )
}
