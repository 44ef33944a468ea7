//! The notify function's `[function.config]`.
//!
//! `sinks = ["notifications", "webhook"]` arrives JSON-encoded (runnel passes
//! non-string TOML values as JSON); `sinks = "notifications, webhook"`
//! arrives as the plain string. Both are accepted.

use runnel_sdk::{Context, Error};

/// Where notifications go when `sinks` is not configured.
const DEFAULT_SINKS: [&str; 2] = ["notifications", "webhook"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Sinks to notify, in order; the ones a pipeline does not declare are skipped.
    pub sinks: Vec<String>,
}

impl Config {
    /// Reads the pipeline's config; keys this function does not know are
    /// ignored. The error names the key.
    pub fn from_context(ctx: &Context) -> Result<Config, Error> {
        let sinks = ctx
            .config_names("sinks")?
            .unwrap_or_else(|| DEFAULT_SINKS.iter().map(|s| s.to_string()).collect());
        Ok(Config { sinks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, Error> {
        Config::from_context(&Context {
            pipeline: "notify".into(),
            config: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sinks: Vec::new(),
            attempt: 1,
        })
    }

    fn sinks(value: &str) -> Result<Vec<String>, String> {
        config(&[("sinks", value)])
            .map(|c| c.sinks)
            .map_err(|e| e.message)
    }

    /// Without config, both the notifications topic and the webhook are tried.
    #[test]
    fn default_sinks() {
        assert_eq!(config(&[]).unwrap().sinks, ["notifications", "webhook"]);
    }

    /// A JSON array, a comma list and a single name all work.
    #[test]
    fn spellings() {
        assert_eq!(sinks(r#"["a","b"]"#).unwrap(), ["a", "b"]);
        assert_eq!(sinks("a, b").unwrap(), ["a", "b"]);
        assert_eq!(sinks("a").unwrap(), ["a"]);
    }

    /// An empty or malformed list is an error naming the key.
    #[test]
    fn bad_values() {
        for bad in ["", "[]", " , ", "[1,2]", r#"["a""#] {
            assert!(
                sinks(bad).unwrap_err().starts_with("config `sinks`"),
                "{bad}"
            );
        }
    }
}
