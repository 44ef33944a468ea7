//! Route patterns: matching a path, and the order routes are tried in.

use super::RESERVED;

/// A route pattern: literal segments, `:name` parameters, and optionally a
/// trailing `...` that matches the rest of the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub pattern: String,
    segments: Vec<Segment>,
    wildcard: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Segment {
    Literal(String),
    Param(String),
}

/// What a matched route says about a path.
#[derive(Debug, PartialEq, Eq)]
pub struct Matched<'p> {
    pub params: Vec<(&'p str, &'p str)>,
    /// What the wildcard matched, with its leading `/` (empty without one).
    pub rest: &'p str,
}

impl Route {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let Some(path) = pattern.strip_prefix('/') else {
            return Err("a route starts with '/'".to_owned());
        };
        if let Some(reserved) = RESERVED
            .iter()
            .find(|r| pattern.starts_with(*r) || r.trim_end_matches('/') == pattern)
        {
            return Err(format!("{reserved} is runnel's own API"));
        }
        let mut segments = Vec::new();
        let mut wildcard = false;
        let parts: Vec<&str> = match path {
            "" => Vec::new(),
            path => path.split('/').collect(),
        };
        for (i, part) in parts.iter().enumerate() {
            if *part == "..." {
                if i + 1 != parts.len() {
                    return Err("`...` may only end a route".to_owned());
                }
                wildcard = true;
            } else if let Some(name) = part.strip_prefix(':') {
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !valid {
                    return Err(format!(
                        "parameter {part:?}: use letters, digits, '-' or '_'"
                    ));
                }
                segments.push(Segment::Param(name.to_ascii_lowercase()));
            } else if part.is_empty() {
                return Err("empty segment ('//' or a trailing '/')".to_owned());
            } else {
                segments.push(Segment::Literal((*part).to_owned()));
            }
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            segments,
            wildcard,
        })
    }

    /// Spin's order: exact routes, then routes with parameters, then
    /// wildcards, longer prefixes first; lower sorts first.
    pub(super) fn precedence(&self) -> (u8, std::cmp::Reverse<usize>) {
        let class = match (
            self.wildcard,
            self.segments.iter().any(|s| matches!(s, Segment::Param(_))),
        ) {
            (false, false) => 0,
            (false, true) => 1,
            (true, _) => 2,
        };
        (class, std::cmp::Reverse(self.segments.len()))
    }

    /// The path's parameters and rest when this route serves `path`.
    pub fn matches<'p>(&'p self, path: &'p str) -> Option<Matched<'p>> {
        if !path.starts_with('/') {
            return None;
        }
        // What is left to match, with its leading '/'.
        let mut tail = if path == "/" { "" } else { path };
        let mut params = Vec::new();
        for segment in &self.segments {
            let rest = tail.strip_prefix('/')?;
            let (part, next) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Param(name) if !part.is_empty() => params.push((name.as_str(), part)),
                _ => return None,
            }
            tail = next;
        }
        match (self.wildcard, tail.is_empty()) {
            (true, _) => Some(Matched { params, rest: tail }),
            (false, true) => Some(Matched { params, rest: "" }),
            (false, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(pattern: &str) -> Route {
        Route::parse(pattern).unwrap()
    }

    #[test]
    fn routes_match_literals_params_and_wildcards() {
        let users = route("/api/users/:id");
        assert_eq!(
            users.matches("/api/users/42"),
            Some(Matched {
                params: vec![("id", "42")],
                rest: ""
            })
        );
        assert_eq!(users.matches("/api/users/"), None);
        assert_eq!(users.matches("/api/users/42/x"), None);
        assert_eq!(users.matches("/api/users"), None);
        let hooks = route("/hooks/...");
        assert_eq!(hooks.matches("/hooks/a/b").map(|m| m.rest), Some("/a/b"));
        assert_eq!(hooks.matches("/hooks").map(|m| m.rest), Some(""));
        assert_eq!(hooks.matches("/hooksx"), None);
        assert_eq!(
            route("/").matches("/"),
            Some(Matched {
                params: vec![],
                rest: ""
            })
        );
        assert_eq!(
            route("/...").matches("/any/thing").map(|m| m.rest),
            Some("/any/thing")
        );
    }

    #[test]
    fn bad_routes_are_refused_with_a_reason() {
        for (pattern, reason) in [
            ("api", "starts with '/'"),
            ("/a/.../b", "may only end"),
            ("/a//b", "empty segment"),
            ("/a/:", "parameter"),
            ("/v1/objects", "runnel's own API"),
            ("/metrics", "runnel's own API"),
        ] {
            let error = Route::parse(pattern).unwrap_err();
            assert!(error.contains(reason), "{pattern}: {error}");
        }
    }

    #[test]
    fn exact_beats_param_beats_wildcard() {
        let mut routes = [
            route("/..."),
            route("/api/..."),
            route("/api/users/:id"),
            route("/api/users/me"),
        ];
        routes.sort_by_key(Route::precedence);
        let first = |path: &str| {
            routes
                .iter()
                .find(|r| r.matches(path).is_some())
                .map(|r| r.pattern.as_str())
        };
        assert_eq!(first("/api/users/me"), Some("/api/users/me"));
        assert_eq!(first("/api/users/7"), Some("/api/users/:id"));
        assert_eq!(first("/api/other"), Some("/api/..."));
        assert_eq!(first("/else"), Some("/..."));
    }
}
