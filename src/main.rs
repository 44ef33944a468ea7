//! The `runnel` command line: parses arguments, calls into the library and
//! maps errors to exit codes (1: invalid config or failed invocation).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use runnel::config::{self, reader::Diagnostic, runtime::RuntimeConfig};

/// An event is allocated on one thread and freed on another; mimalloc
/// handles that with far less CPU than glibc's arenas (README,
/// "Dependencies and why").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Clone)]
#[command(
    name = "runnel",
    version,
    about = "Serverless-style event pipelines: sources -> WebAssembly functions -> sinks"
)]
struct Cli {
    /// Runtime config file [default: runnel.toml when it exists].
    #[arg(long, global = true, env = "RUNNEL_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for embedded backends' data [default: data].
    #[arg(long, global = true, env = "RUNNEL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Prebuilt components of crate functions (see functions.components_dir).
    #[arg(long, global = true, env = "RUNNEL_COMPONENTS_DIR")]
    components_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, env = "RUNNEL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Clone)]
enum DlqCommand {
    /// Print a pipeline's dead letters: key, outcome, attempts, time, error.
    List {
        /// The pipeline's name.
        pipeline: String,
        /// Where the pipeline files are.
        #[arg(long, default_value = "pipelines")]
        pipelines: Vec<PathBuf>,
    },
    /// Send dead letters through the pipeline again (all, or those given).
    Replay {
        pipeline: String,
        /// Only the dead letter of this idempotency key (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        #[arg(long, default_value = "pipelines")]
        pipelines: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Clone)]
enum Command {
    /// Inspect and replay dead letters.
    Dlq {
        #[command(subcommand)]
        action: DlqCommand,
    },
    /// Run pipelines (files, or directories of *.toml) and the HTTP API.
    Up {
        #[arg(default_value = "pipelines")]
        paths: Vec<PathBuf>,
        /// HTTP listen address [default: 127.0.0.1:8080].
        #[arg(long, env = "RUNNEL_LISTEN")]
        listen: Option<std::net::SocketAddr>,
        /// Reload when a pipeline file, the runtime config or a function's
        /// sources change (events in flight finish first).
        #[arg(long, env = "RUNNEL_WATCH")]
        watch: bool,
    },
    /// Check pipeline files and the runtime config; print every problem.
    Validate {
        #[arg(default_value = "pipelines")]
        paths: Vec<PathBuf>,
    },
    /// Create a function and a pipeline for it, with a sample event.
    New {
        /// The function's language.
        #[arg(value_enum)]
        language: runnel::scaffold::Language,
        /// Its name: the function's directory (functions/<name>), the
        /// pipeline's name and file (pipelines/<name>.toml).
        name: String,
        /// What the pipeline takes events from.
        #[arg(long, value_enum, default_value_t = runnel::scaffold::Source::Storage)]
        source: runnel::scaffold::Source,
        /// The directory holding functions/ and pipelines/.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run one function on one event locally and print its outputs.
    Invoke {
        /// A pipeline file, a function project directory or a .wasm component.
        target: PathBuf,
        /// The event: a JSON event file, or any file as the payload (for an
        /// HTTP pipeline, the request's body; a schedule pipeline without
        /// it runs its next tick).
        #[arg(long)]
        event: Option<PathBuf>,
        /// For an HTTP pipeline: the request, as "METHOD /path?query".
        #[arg(long)]
        request: Option<String>,
        /// A request header, as "NAME: VALUE" (with --request).
        #[arg(long = "header", value_parser = parse_header, requires = "request")]
        headers: Vec<(String, String)>,
        /// User metadata for object events, as NAME=VALUE.
        #[arg(long = "meta", value_parser = parse_pair)]
        meta: Vec<(String, String)>,
        /// Save each output under DIR/<sink>/<key> (an HTTP function's
        /// response body: to the file OUT).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    text.split_once(':')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("expected NAME: VALUE, found {text:?}"))
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=VALUE, found {text:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = colours(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR"),
    );
    let printed = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let printed = if format == LogFormat::Json {
        printed.json().boxed()
    } else {
        printed.boxed()
    };
    // The dashboard's last invocations read the log with a filter of their
    // own, whatever RUST_LOG prints.
    tracing_subscriber::registry()
        .with(printed.with_filter(filter))
        .with(runnel::dashboard::activity::Layer.with_filter(runnel::dashboard::activity::filter()))
        .init();
}

/// Colours only for a terminal (a log file or journald gets plain text),
/// and not when `NO_COLOR` is set to anything but the empty string
/// (no-color.org).
fn colours(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

fn print_diagnostics(diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        eprintln!("{d}");
    }
    eprintln!("{} problem(s) found", diagnostics.len());
}

fn runtime_config(cli: &Cli) -> Result<RuntimeConfig, Vec<Diagnostic>> {
    let mut config = runtime_config_file(cli)?;
    if let Some(dir) = &cli.components_dir {
        config.functions.components_dir = Some(dir.clone());
    }
    Ok(config)
}

/// The runtime config file in use, if any.
fn config_file(cli: &Cli) -> Option<PathBuf> {
    cli.config.clone().or_else(|| {
        Path::new("runnel.toml")
            .is_file()
            .then(|| PathBuf::from("runnel.toml"))
    })
}

/// The pipeline paths `up` was given.
fn paths_of(cli: &Cli) -> &[PathBuf] {
    match &cli.command {
        Command::Up { paths, .. } => paths,
        _ => &[],
    }
}

fn runtime_config_file(cli: &Cli) -> Result<RuntimeConfig, Vec<Diagnostic>> {
    match config_file(cli) {
        Some(file) => RuntimeConfig::load(&file, cli.data_dir.as_deref(), &config::process_env),
        None => Ok(RuntimeConfig::defaults(
            cli.data_dir.as_deref().unwrap_or(Path::new("data")),
        )),
    }
}

/// The runtime config and the pipelines under `paths`, or `None` after
/// printing every problem in any of them.
fn with_pipelines(
    runtime: Result<RuntimeConfig, Vec<Diagnostic>>,
    paths: &[PathBuf],
) -> Option<(RuntimeConfig, Vec<runnel::config::pipeline::PipelineConfig>)> {
    match (runtime, config::load_pipelines(paths, &config::process_env)) {
        (Ok(r), Ok(p)) if config::unbound_names(&r, &p).is_empty() => Some((r, p)),
        (Ok(r), Ok(p)) => {
            print_diagnostics(&config::unbound_names(&r, &p));
            None
        }
        (r, p) => {
            let mut problems = r.err().unwrap_or_default();
            problems.extend(p.err().unwrap_or_default());
            print_diagnostics(&problems);
            None
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = runtime_config(&cli);
    match cli.command {
        Command::New {
            language,
            ref name,
            source,
            ref dir,
        } => {
            let created = runnel::scaffold::create(dir, language, name, source)?;
            println!(
                "created {} and {} (a sample event: {})\n\ntry it, from {}:\n{}",
                created.function.display(),
                created.pipeline.display(),
                created.sample.display(),
                dir.display(),
                created
                    .next
                    .lines()
                    .map(|l| format!("  {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { ref paths } => {
            let pipelines = config::load_pipelines(paths, &config::process_env);
            let unbound = match (&runtime, &pipelines) {
                (Ok(runtime), Ok(pipelines)) => config::unbound_names(runtime, pipelines),
                _ => Vec::new(),
            };
            let mut problems = runtime.err().unwrap_or_default();
            problems.extend(unbound);
            match pipelines {
                Ok(pipelines) if problems.is_empty() => {
                    for p in &pipelines {
                        println!("{}: pipeline {} ok", p.file.display(), p.name);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                result => {
                    problems.extend(result.err().unwrap_or_default());
                    print_diagnostics(&problems);
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Up {
            ref paths,
            listen,
            watch,
        } => {
            let Some((mut runtime, pipelines)) = with_pipelines(runtime, paths) else {
                return Ok(ExitCode::FAILURE);
            };
            if let Some(listen) = listen {
                runtime.http.listen = listen;
            }
            let rt = tokio::runtime::Runtime::new()?;
            if watch {
                let again = cli.clone();
                let watching = runnel::app::Watching {
                    load: Box::new(move || {
                        let (mut runtime, pipelines) =
                            with_pipelines(runtime_config(&again), paths_of(&again))?;
                        if let Some(listen) = listen {
                            runtime.http.listen = listen;
                        }
                        Some((runtime, pipelines))
                    }),
                    paths: paths.clone(),
                    config_file: config_file(&cli),
                };
                rt.block_on(runnel::app::up_watching(watching, runtime, pipelines))?;
            } else {
                rt.block_on(runnel::app::up(runtime, pipelines))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { ref action } => {
            let (name, paths) = match action {
                DlqCommand::List {
                    pipeline,
                    pipelines,
                }
                | DlqCommand::Replay {
                    pipeline,
                    pipelines,
                    ..
                } => (pipeline, pipelines),
            };
            let Some((runtime, pipelines)) = with_pipelines(runtime, paths) else {
                return Ok(ExitCode::FAILURE);
            };
            let Some(pipeline) = pipelines.iter().find(|p| &p.name == name) else {
                let names: Vec<_> = pipelines.iter().map(|p| p.name.as_str()).collect();
                anyhow::bail!("no pipeline named {name:?} (found: {})", names.join(", "));
            };
            let rt = tokio::runtime::Runtime::new()?;
            let ok = match action {
                DlqCommand::List { .. } => rt
                    .block_on(runnel::dlq::print_list(&runtime, pipeline))
                    .map(|()| true)?,
                DlqCommand::Replay { ids, .. } => {
                    rt.block_on(runnel::dlq::print_replay(&runtime, pipeline, ids))?
                }
            };
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Invoke {
            ref target,
            ref event,
            ref request,
            ref headers,
            ref meta,
            ref out,
        } => {
            let runtime = match runtime {
                Ok(r) => r,
                Err(problems) => {
                    print_diagnostics(&problems);
                    return Ok(ExitCode::FAILURE);
                }
            };
            let target = if target.extension().is_some_and(|e| e == "toml") {
                match config::read_pipeline(target, &config::process_env) {
                    Ok(p) => runnel::invoke::Target::Pipeline(Box::new(p)),
                    Err(problems) => {
                        print_diagnostics(&problems);
                        return Ok(ExitCode::FAILURE);
                    }
                }
            } else {
                runnel::invoke::Target::Function(runnel::invoke::bare_function(target)?)
            };
            let metadata: BTreeMap<_, _> = meta.iter().cloned().collect();
            let event = match (request, event) {
                (Some(line), body) => {
                    runnel::invoke::request_event(&target, line, headers, body.as_deref())?
                }
                (None, Some(file)) => runnel::invoke::read_event(&target, file, &metadata)?,
                (None, None) => runnel::invoke::next_tick_event(&target)?,
            };
            // The wasmtime-wasi bindings expect a Tokio context even when
            // sync, and an HTTP function's I/O runs on it.
            let rt = tokio::runtime::Runtime::new()?;
            let _guard = rt.enter();
            let ok = runnel::invoke::run(&runtime, &target, &event, out.as_ref())?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_turns_colours_off_on_a_terminal() {
        assert!(colours(true, None));
        assert!(!colours(true, Some("1".into())));
        assert!(colours(true, Some("".into())), "empty NO_COLOR is unset");
        assert!(!colours(false, None));
    }
}
