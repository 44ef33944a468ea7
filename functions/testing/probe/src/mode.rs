//! What the probe is asked to do, and where it reads that from.
//!
//! A test picks the behaviour per event (data `mode:spin`) when one pipeline
//! has to see several behaviours, or per pipeline (config `mode = "spin"`)
//! when the event's data must stay a real payload.

/// One behaviour of the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One output carrying the event's data back out.
    Echo,
    /// Succeeds with no outputs.
    Noop,
    /// Never returns: exercises the host's CPU deadline.
    Spin,
    /// Allocates until memory runs out: exercises the host's memory limit.
    Hog,
    /// Traps (panics) in the middle of the call.
    Trap,
    /// A retryable error.
    Fail,
    /// A non-retryable error, which dead-letters the event.
    Reject,
    /// One large output (config `bytes`).
    Big,
    /// Many outputs (config `count`).
    Many,
    /// A million outputs: more than any sane limit, and than 32 MiB holds.
    Flood,
    /// One output of 1 GiB, if the memory limit allowed building it.
    Giant,
    /// One output naming a sink the pipeline did not declare.
    Stray,
    /// Increments the key-value store's `count` (config `delta`, default
    /// 1) and writes the sum; a store error fails the event as it says.
    Counter,
    /// Sends `count` (default 1) requests with runnel-sdk's `http` to
    /// config `url` (method config `method`, default GET; body the
    /// event's data), one output per response: its body, with its status
    /// as attribute `status`. An error fails the event as it says.
    Http,
    /// One output holding the pipeline's variable named by config
    /// `variable` (or `<unset>`).
    Variable,
    /// One output telling what earlier events left behind in this
    /// instance's memory: "events before: 0, dirty pages: 0" when every
    /// event gets a fresh instance, as it must.
    Residue,
}

impl Mode {
    /// The mode the event asks for (data `mode:<name>`, or `probe-mode=<name>`
    /// anywhere in it, as in a database row's column), else the configured
    /// one, else echo.
    pub fn select(data: &[u8], configured: Option<&str>) -> Result<Mode, String> {
        let inline = data
            .windows(11)
            .position(|w| w == b"probe-mode=")
            .map(|at| {
                let rest = &data[at + 11..];
                let end = rest
                    .iter()
                    .position(|b| !b.is_ascii_alphabetic())
                    .unwrap_or(rest.len());
                String::from_utf8_lossy(&rest[..end]).into_owned()
            });
        let name = match (data.strip_prefix(b"mode:"), inline) {
            (Some(rest), _) => String::from_utf8_lossy(rest).trim().to_owned(),
            (None, Some(name)) => name,
            (None, None) => configured.unwrap_or("echo").trim().to_owned(),
        };
        Mode::parse(&name).ok_or_else(|| format!("probe: unknown mode `{name}`"))
    }

    fn parse(name: &str) -> Option<Mode> {
        Some(match name {
            "echo" => Mode::Echo,
            "noop" => Mode::Noop,
            "spin" => Mode::Spin,
            "hog" => Mode::Hog,
            "trap" => Mode::Trap,
            "fail" => Mode::Fail,
            "reject" => Mode::Reject,
            "big" => Mode::Big,
            "many" => Mode::Many,
            "flood" => Mode::Flood,
            "giant" => Mode::Giant,
            "stray" => Mode::Stray,
            "residue" => Mode::Residue,
            "variable" => Mode::Variable,
            "counter" => Mode::Counter,
            "http" => Mode::Http,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event's data wins over the config, and surrounding whitespace is ignored.
    #[test]
    fn data_overrides_config() {
        assert_eq!(Mode::select(b"mode:spin\n", Some("echo")), Ok(Mode::Spin));
        assert_eq!(Mode::select(b"hello", Some("many")), Ok(Mode::Many));
        assert_eq!(Mode::select(b"hello", None), Ok(Mode::Echo));
    }

    /// A typo in a test's mode is an error, not a silent echo.
    #[test]
    fn unknown_mode_is_an_error() {
        assert!(
            Mode::select(b"mode:spinn", None)
                .unwrap_err()
                .contains("spinn")
        );
    }
}
