//! The thumbnail function's `[function.config]`, parsed once per event into
//! typed values.
//!
//! runnel passes TOML strings through as they are and encodes every other
//! value as JSON, so `widths = [128, 512]` arrives as `[128,512]` while
//! `widths = "128,512"` arrives as `128,512`; both spellings are accepted.

use std::fmt;

/// Largest width anyone could mean for a thumbnail; beyond it a value is a typo.
const MAX_WIDTH: u32 = 16_384;

/// What the function was configured to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Target widths in pixels, as configured (order and duplicates kept;
    /// planning sorts them out). Default `[128, 512, 1024]`.
    pub widths: Vec<u32>,
    /// JPEG quality, 1-100. Default 80.
    pub quality: u8,
    /// Sink the thumbnails are written to. Default `thumbnails`.
    pub thumbnail_sink: String,
    /// Sink the JSON report is written to. Default `processed`.
    pub result_sink: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            widths: vec![128, 512, 1024],
            quality: 80,
            thumbnail_sink: "thumbnails".into(),
            result_sink: "processed".into(),
        }
    }
}

/// A config value that can never work; it names the key so the pipeline's
/// author knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: &'static str,
    pub value: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "config `{}` = {:?}: {}",
            self.key, self.value, self.reason
        )
    }
}

impl Config {
    /// Reads the pipeline's config pairs; keys this function does not know are ignored.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        for (key, value) in pairs {
            let error = |key, reason: String| ConfigError {
                key,
                value: value.clone(),
                reason,
            };
            match key.as_str() {
                "widths" => config.widths = parse_widths(value).map_err(|r| error("widths", r))?,
                "quality" => {
                    config.quality = parse_quality(value).map_err(|r| error("quality", r))?
                }
                "thumbnail_sink" => config.thumbnail_sink = parse_name(value),
                "result_sink" => config.result_sink = parse_name(value),
                _ => {}
            }
        }
        Ok(config)
    }
}

/// `[128,512]`, `128,512`, `128, 512` or a lone `128`.
fn parse_widths(value: &str) -> Result<Vec<u32>, String> {
    let trimmed = value.trim();
    let inner = match trimmed.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .ok_or_else(|| "unterminated list".to_string())?,
        None => trimmed,
    };
    let widths = inner
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| match item.parse::<u32>() {
            Ok(w) if (1..=MAX_WIDTH).contains(&w) => Ok(w),
            _ => Err(format!(
                "`{item}` is not a width (whole number of pixels, 1 to {MAX_WIDTH})"
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if widths.is_empty() {
        return Err("no widths given".into());
    }
    Ok(widths)
}

fn parse_quality(value: &str) -> Result<u8, String> {
    match value.trim().parse::<u8>() {
        Ok(q) if (1..=100).contains(&q) => Ok(q),
        _ => Err("JPEG quality must be a whole number from 1 to 100".into()),
    }
}

/// Sink names are TOML strings and arrive bare, but tolerate a JSON-quoted one.
fn parse_name(value: &str) -> String {
    serde_json::from_str::<String>(value).unwrap_or_else(|_| value.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// An empty config table means the documented defaults.
    #[test]
    fn defaults() {
        assert_eq!(Config::from_pairs(&[]).unwrap(), Config::default());
    }

    /// Widths arrive JSON-encoded from a TOML array, or as a comma list from a TOML string.
    #[test]
    fn widths_in_every_spelling() {
        for spelling in [
            "[128,512,1024]",
            "[128, 512, 1024]",
            "128,512,1024",
            " 128 , 512,1024 ",
        ] {
            let config = Config::from_pairs(&pairs(&[("widths", spelling)])).unwrap();
            assert_eq!(config.widths, vec![128, 512, 1024], "{spelling}");
        }
        let config = Config::from_pairs(&pairs(&[("widths", "256")])).unwrap();
        assert_eq!(config.widths, vec![256]);
    }

    /// Bad widths are rejected with the key named, not silently dropped.
    #[test]
    fn bad_widths_name_the_key() {
        for bad in [
            "",
            "[]",
            "[128,",
            "128,abc",
            "0",
            "-5",
            "1.5",
            "99999",
            r#"["128"]"#,
        ] {
            let err = Config::from_pairs(&pairs(&[("widths", bad)])).unwrap_err();
            assert_eq!(err.key, "widths", "{bad}");
            assert!(err.to_string().starts_with("config `widths`"), "{err}");
        }
    }

    /// Quality is bounded to what a JPEG encoder accepts.
    #[test]
    fn quality_bounds() {
        let config = Config::from_pairs(&pairs(&[("quality", "95")])).unwrap();
        assert_eq!(config.quality, 95);
        for bad in ["0", "101", "high", "80.5"] {
            let err = Config::from_pairs(&pairs(&[("quality", bad)])).unwrap_err();
            assert_eq!(err.key, "quality", "{bad}");
        }
    }

    /// Sink names are taken as given.
    #[test]
    fn sink_names() {
        let config = Config::from_pairs(&pairs(&[
            ("thumbnail_sink", "thumbs"),
            ("result_sink", "\"done\""),
        ]))
        .unwrap();
        assert_eq!(config.thumbnail_sink, "thumbs");
        assert_eq!(config.result_sink, "done");
    }
}
