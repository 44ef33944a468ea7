//! Any text as a runtime config (`runnel.toml`): a config or a list of
//! located problems, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let env = |name: &str| (name == "SET").then(|| "value".to_owned());
    let file = std::path::Path::new("fuzz/runnel.toml");
    if let Err(problems) = runnel::config::runtime::RuntimeConfig::parse(file, text, None, &env) {
        assert!(!problems.is_empty(), "an error names at least one problem");
    }
});
