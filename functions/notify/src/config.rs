//! The notify function's `[function.config]`.
//!
//! `sinks = ["notifications", "webhook"]` arrives JSON-encoded (runnel passes
//! non-string TOML values as JSON); `sinks = "notifications, webhook"`
//! arrives as the plain string. Both are accepted.

/// Where notifications go when `sinks` is not configured.
const DEFAULT_SINKS: [&str; 2] = ["notifications", "webhook"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Sinks to notify, in order; the ones a pipeline does not declare are skipped.
    pub sinks: Vec<String>,
}

impl Config {
    /// Reads the pipeline's config pairs; keys this function does not know are
    /// ignored. The error names the key.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Config, String> {
        let mut sinks: Vec<String> = DEFAULT_SINKS.iter().map(|s| s.to_string()).collect();
        for (key, value) in pairs {
            if key == "sinks" {
                sinks = parse_names(value)
                    .map_err(|reason| format!("config `sinks` = {value:?}: {reason}"))?;
            }
        }
        Ok(Config { sinks })
    }
}

fn parse_names(value: &str) -> Result<Vec<String>, String> {
    let trimmed = value.trim();
    let names: Vec<String> = if trimmed.starts_with('[') {
        serde_json::from_str(trimmed).map_err(|e| format!("not a list of sink names ({e})"))?
    } else {
        trimmed.split(',').map(|s| s.trim().to_owned()).collect()
    };
    let names: Vec<String> = names.into_iter().filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        return Err("no sinks given".into());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sinks(value: &str) -> Result<Vec<String>, String> {
        Config::from_pairs(&[("sinks".into(), value.into())]).map(|c| c.sinks)
    }

    /// Without config, both the notifications topic and the webhook are tried.
    #[test]
    fn default_sinks() {
        assert_eq!(
            Config::from_pairs(&[]).unwrap().sinks,
            ["notifications", "webhook"]
        );
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
