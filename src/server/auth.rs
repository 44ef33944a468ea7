//! Who may use which route: API keys with scopes (`[http.auth]`).
//!
//! A key is a bearer token, given in the runtime config (from the
//! environment or a file) or only as its SHA-256, and kept hashed: a
//! presented token is hashed and compared with every key's hash in constant
//! time. Each key has scopes; each route needs one:
//!
//! | scope | lets a key |
//! |---|---|
//! | `objects:write:<bucket>` | upload (`PUT /v1/objects/<bucket>/…`) |
//! | `objects:read:<bucket>` | download (`GET /v1/objects/<bucket>/…`) |
//! | `topics:read:<topic>` | read a topic (`GET /v1/topics/<topic>`) |
//! | `topics:write:<topic>` | publish (`POST /v1/topics/<topic>`) |
//! | `invoke:<pipeline>` | call an HTTP function's routes (`auth = "token"`) |
//! | `metrics` | scrape `/metrics` |
//! | `events:s3` | send S3 notifications (`POST /v1/events/s3`) |
//! | `dashboard` | see the dashboard (`GET /`) and its live feed |
//! | `replay:<pipeline>` | replay a pipeline's dead letters from the dashboard |
//!
//! A browser cannot put a bearer token on a page load, so the token is
//! also taken as the password of HTTP Basic credentials (any user name):
//! the browser asks for it once and sends it with the page's requests.
//! `*` in place of a name covers every name. Without keys runnel serves
//! anyone who reaches it, which is refused on a non-loopback address unless
//! `allow_anonymous = true` says it is meant. The probes (`/healthz`,
//! `/livez`, `/readyz`) are always open.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::rate_limit::{RateLimitConfig, TokenBucket, retry_after};
use crate::config::reader::{Field, Table};

/// The kinds of scope, each with a name after it ([`BARE`] alone).
const KINDS: [&str; 7] = [
    "objects:read",
    "objects:write",
    "topics:read",
    "topics:write",
    "invoke",
    "events",
    "replay",
];

/// The scopes without a name.
const BARE: [&str; 2] = ["metrics", "dashboard"];

/// What a key's `scopes` may hold, for the error that names a bad one.
pub const EXPECTED_SCOPES: &str = "expected objects:read:<bucket>, objects:write:<bucket>, topics:read:<topic>, topics:write:<topic>, invoke:<pipeline>, replay:<pipeline>, events:s3, metrics or dashboard (a name may be *)";

#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// Serve anyone without a key, even on a non-loopback address.
    pub allow_anonymous: bool,
    pub keys: Vec<ApiKey>,
    /// `[http.auth.jwt]`: how routes with `auth = "jwt"` check tokens.
    pub jwt: Option<super::jwt::JwtConfig>,
}

#[derive(Clone)]
pub struct ApiKey {
    /// For the log: which key was used (never the token).
    pub name: String,
    sha256: [u8; 32],
    pub scopes: Vec<String>,
    /// The key's own limit over every route (`rate_limit`): its bucket,
    /// shared by the config's copies.
    bucket: Option<std::sync::Arc<TokenBucket>>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl AuthConfig {
    /// Reads `[http.auth]`: `allow_anonymous`, and `[http.auth.keys.<name>]`
    /// tables with `token`, `token_file` or `token_sha256`, and `scopes`.
    pub fn read(table: Table<'_, '_>) -> Option<Self> {
        let allow_anonymous = table.boolean("allow_anonymous").unwrap_or(false);
        let mut keys = Vec::new();
        let mut ok = true;
        let mut declared = 0;
        if let Some(keys_table) = table.table("keys") {
            let entries = keys_table.entries();
            declared = entries.len();
            for (name, field) in entries {
                match field.table().and_then(|t| read_key(&name, t)) {
                    Some(key) => keys.push(key),
                    None => ok = false,
                }
            }
        }
        let jwt = match table.table("jwt") {
            None => Some(None),
            Some(jwt) => super::jwt::JwtConfig::read(jwt).map(Some),
        };
        if allow_anonymous
            && declared > 0
            && let Some(field) = table.get("allow_anonymous")
        {
            field.error("allow_anonymous with keys: a request without a key would be served anyway; choose one");
            ok = false;
        }
        table.finish();
        ok.then_some(Self {
            allow_anonymous,
            keys,
            jwt: jwt?,
        })
    }

    /// Whether requests must present a key.
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The key a request presents, if it has the `scope` route's scope:
    /// `Ok(None)` when no keys are configured (anonymous access), 401 when
    /// the request has no known key, 403 when its key lacks the scope.
    #[allow(
        clippy::result_large_err,
        reason = "every caller answers with the response"
    )]
    pub fn authorize(&self, headers: &HeaderMap, scope: &str) -> Result<Option<&ApiKey>, Response> {
        if !self.required() {
            return Ok(None);
        }
        let key = self.presented_key(headers, scope)?;
        if key.scopes.iter().any(|granted| covers(granted, scope)) {
            if let Some(Err(wait)) = key.bucket.as_ref().map(|b| b.take()) {
                let mut response = denied(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("API key {:?} is over its rate limit", key.name),
                );
                if let Ok(value) = HeaderValue::from_str(&retry_after(wait)) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                return Err(response);
            }
            Ok(Some(key))
        } else {
            Err(denied(
                StatusCode::FORBIDDEN,
                format!("API key {:?} lacks scope {scope}", key.name),
            ))
        }
    }

    /// Whether the request's key has `scope` (always without keys), for
    /// showing what a caller may do; takes nothing from its rate limit.
    pub fn grants(&self, headers: &HeaderMap, scope: &str) -> bool {
        !self.required()
            || self
                .presented_key(headers, scope)
                .is_ok_and(|key| key.scopes.iter().any(|granted| covers(granted, scope)))
    }

    /// The configured key the request presents, else the 401.
    #[allow(
        clippy::result_large_err,
        reason = "every caller answers with the response"
    )]
    fn presented_key(&self, headers: &HeaderMap, scope: &str) -> Result<&ApiKey, Response> {
        let Some(token) = presented(headers) else {
            return Err(denied(
                StatusCode::UNAUTHORIZED,
                format!(
                    "this route needs an API key with scope {scope}: send Authorization: Bearer <token>"
                ),
            ));
        };
        let digest: [u8; 32] = Sha256::digest(&token).into();
        // Every key is compared, so the time taken does not say which
        // matched or how much of a hash did.
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.sha256.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found.ok_or_else(|| denied(StatusCode::UNAUTHORIZED, "unknown API key"))
    }
}

/// Whether a granted scope covers a needed one (`objects:read:*` covers
/// `objects:read:thumbnails`).
fn covers(granted: &str, needed: &str) -> bool {
    if granted == needed {
        return true;
    }
    // `*` stands for a name only: the kind before it must be the needed one's.
    match (granted.strip_suffix(":*"), needed.rsplit_once(':')) {
        (Some(kind), Some((needed_kind, _))) => kind == needed_kind,
        _ => false,
    }
}

/// The token in `Authorization`: a bearer token, or the password of Basic
/// credentials (what a browser sends after asking for it).
fn presented(headers: &HeaderMap) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(6)?;
    if scheme.eq_ignore_ascii_case(b"basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim_ascii())
            .ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        let token = decoded[colon + 1..].to_vec();
        return (!token.is_empty()).then_some(token);
    }
    let (scheme, token) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then(|| token.to_vec())
}

fn denied(status: StatusCode, message: impl Into<String>) -> Response {
    let mut response = (status, axum::Json(json!({ "error": message.into() }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn read_key(name: &str, table: Table<'_, '_>) -> Option<ApiKey> {
    let token = table.get("token");
    let file = table.get("token_file");
    let hashed = table.get("token_sha256");
    let given = [&token, &file, &hashed]
        .iter()
        .filter(|f| f.is_some())
        .count();
    let sha256 = match (token, file, hashed) {
        (_, _, Some(field)) | (_, Some(field), _) if given > 1 => {
            field.error("give one of token, token_file and token_sha256, not several");
            None
        }
        (Some(field), None, None) => field
            .string()
            .and_then(|t| token_digest(&field, t.as_bytes())),
        (None, Some(field), None) => field.string().and_then(|path| match std::fs::read(&path) {
            Ok(bytes) => token_digest(&field, bytes.trim_ascii()),
            Err(e) => {
                field.error(format!("reading {path}: {e}"));
                None
            }
        }),
        (None, None, Some(field)) => field.string().and_then(|text| {
            let digest = hex::decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok());
            if digest.is_none() {
                field.error("expected 64 hex digits (the SHA-256 of the token)");
            }
            digest
        }),
        _ => {
            table.missing("token");
            None
        }
    };
    let scopes = table.required("scopes").and_then(|field| {
        let scopes = field.strings()?;
        let bad: Vec<_> = scopes.iter().filter(|s| !valid_scope(s)).collect();
        if !bad.is_empty() {
            field.error(format!("unknown scope(s) {bad:?}; {EXPECTED_SCOPES}"));
            return None;
        }
        Some(scopes)
    });
    let bucket = match table.get("rate_limit") {
        None => Some(None),
        Some(field) => {
            RateLimitConfig::read(field).map(|c| Some(std::sync::Arc::new(TokenBucket::new(c))))
        }
    };
    table.finish();
    Some(ApiKey {
        name: name.to_owned(),
        sha256: sha256?,
        scopes: scopes?,
        bucket: bucket?,
    })
}

/// Short tokens can be guessed; 16 bytes is the least a generated key has.
fn token_digest(field: &Field<'_, '_>, token: &[u8]) -> Option<[u8; 32]> {
    if token.len() < 16 {
        field.error("a token has at least 16 characters (e.g. `openssl rand -hex 32`)");
        return None;
    }
    Some(Sha256::digest(token).into())
}

fn valid_scope(scope: &str) -> bool {
    if BARE.contains(&scope) {
        return true;
    }
    let Some((kind, name)) = scope.rsplit_once(':') else {
        return false;
    };
    KINDS.contains(&kind) && !name.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(scopes: &[&str]) -> AuthConfig {
        AuthConfig {
            allow_anonymous: false,
            keys: vec![ApiKey {
                name: "k".into(),
                sha256: Sha256::digest(b"0123456789abcdef").into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                bucket: None,
            }],
            jwt: None,
        }
    }

    fn with_token(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn scopes_and_tokens_decide_401_403_or_ok() {
        let auth = config(&["objects:read:*", "metrics"]);
        let status = |headers: &HeaderMap, scope| match auth.authorize(headers, scope) {
            Ok(key) => key.map(|k| k.name.clone()).unwrap(),
            Err(response) => response.status().as_str().to_owned(),
        };
        let good = with_token("0123456789abcdef");
        assert_eq!(status(&good, "objects:read:thumbnails"), "k");
        assert_eq!(status(&good, "metrics"), "k");
        assert_eq!(status(&good, "objects:write:uploads"), "403");
        assert_eq!(status(&with_token("0123456789abcdeX"), "metrics"), "401");
        assert_eq!(status(&HeaderMap::new(), "metrics"), "401");
        assert!(
            AuthConfig::default()
                .authorize(&HeaderMap::new(), "metrics")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn wildcards_cover_names_only() {
        assert!(covers("topics:read:*", "topics:read:notifications"));
        assert!(!covers("topics:read:*", "topics:write:notifications"));
        assert!(
            !covers("topics:*", "topics:read:x"),
            "a kind is never a wildcard"
        );
        assert!(valid_scope("invoke:hello-http"));
        assert!(valid_scope("events:s3"));
        assert!(!valid_scope("objects:delete:x"));
        assert!(!valid_scope("metrics:x"));
        assert!(valid_scope("dashboard"));
        assert!(valid_scope("replay:*"));
        assert!(!valid_scope("replay"));
    }

    /// A browser's Basic credentials carry the token as their password;
    /// `grants` answers without taking from the key's rate limit.
    #[test]
    fn basic_credentials_carry_the_token() {
        use base64::Engine as _;
        let auth = config(&["dashboard", "replay:thumbnails"]);
        let basic = |userpass: &str| {
            let mut headers = HeaderMap::new();
            let encoded = base64::engine::general_purpose::STANDARD.encode(userpass);
            headers.insert(
                header::AUTHORIZATION,
                format!("Basic {encoded}").parse().unwrap(),
            );
            headers
        };
        assert!(
            auth.authorize(&basic("anyone:0123456789abcdef"), "dashboard")
                .is_ok()
        );
        assert!(
            auth.authorize(&basic(":0123456789abcdef"), "dashboard")
                .is_ok()
        );
        let wrong = auth.authorize(&basic("0123456789abcdef:"), "dashboard");
        assert_eq!(wrong.unwrap_err().status(), StatusCode::UNAUTHORIZED);
        let good = basic("x:0123456789abcdef");
        assert!(auth.grants(&good, "replay:thumbnails"));
        assert!(!auth.grants(&good, "replay:notify"));
        assert!(!auth.grants(&HeaderMap::new(), "dashboard"));
        assert!(AuthConfig::default().grants(&HeaderMap::new(), "replay:x"));
    }
}
