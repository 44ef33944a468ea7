//! JWT bearer tokens for HTTP functions' routes (`auth = "jwt"`), as API
//! gateways' JWT authorizers check them: the signature against a JWKS (a
//! file, or the identity provider's URL), then `iss`, `aud` and `exp`.
//!
//! A token's `kid` picks its key; a key id the set does not have makes a
//! URL's set be fetched again (at most once a minute), so a provider's key
//! rotation needs no restart. The algorithms accepted are listed (default
//! RS256 and ES256); a key is used only with an algorithm of its own
//! family, so an RSA public key cannot be passed off as an HMAC secret.

#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;

use crate::config::reader::Table;

/// `[http.auth.jwt]`.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtConfig {
    pub jwks: JwksSource,
    /// The `iss` a token must have.
    pub issuer: String,
    /// An `aud` a token must have.
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp` and `nbf` (default 30s).
    pub leeway: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

impl JwtConfig {
    pub fn read(table: Table<'_, '_>) -> Option<Self> {
        let file = table.string("jwks_file");
        let url = table.get("jwks_url").and_then(|f| {
            let url = f.string()?;
            let ok = url.starts_with("https://") || url.starts_with("http://");
            if !ok {
                f.error("expected an http:// or https:// URL");
            }
            ok.then_some(url)
        });
        let jwks = match (file, url) {
            (Some(file), None) => Some(JwksSource::File(file.into())),
            (None, Some(url)) => Some(JwksSource::Url(url)),
            (None, None) => {
                table.missing("jwks_file (or jwks_url)");
                None
            }
            (Some(_), Some(_)) => {
                if let Some(f) = table.get("jwks_url") {
                    f.error("give jwks_file or jwks_url, not both");
                }
                None
            }
        };
        let issuer = table.required_string("issuer");
        let audience = table.required_string("audience");
        let algorithms = match table.get("algorithms") {
            None => Some(vec![Algorithm::RS256, Algorithm::ES256]),
            Some(field) => field.strings().and_then(|names| {
                let mut algorithms = Vec::new();
                for name in names {
                    match Algorithm::from_str(&name) {
                        Ok(alg) => algorithms.push(alg),
                        Err(_) => {
                            field.error(format!(
                                "unknown algorithm {name:?}; expected e.g. \"RS256\", \"ES256\", \"HS256\""
                            ));
                            return None;
                        }
                    }
                }
                Some(algorithms)
            }),
        };
        let leeway = table.duration("leeway").unwrap_or(Duration::from_secs(30));
        table.finish();
        Some(Self {
            jwks: jwks?,
            issuer: issuer?,
            audience: audience?,
            algorithms: algorithms?,
            leeway,
        })
    }
}

/// Verifies tokens against the configured key set.
pub struct JwtVerifier {
    config: JwtConfig,
    keys: RwLock<(JwkSet, Instant)>,
    http: reqwest::Client,
    refetch_after: Duration,
}

/// How soon a URL's key set may be fetched again for an unknown `kid`.
const REFETCH_AFTER: Duration = Duration::from_secs(60);

impl JwtVerifier {
    /// Loads the key set: a start-up without it fails, naming the source.
    pub async fn open(config: JwtConfig, http: reqwest::Client) -> anyhow::Result<Self> {
        let keys = load(&config.jwks, &http).await?;
        Ok(Self {
            config,
            keys: RwLock::new((keys, Instant::now())),
            http,
            refetch_after: REFETCH_AFTER,
        })
    }

    /// The token's claims, or a 401 saying what is wrong with it.
    pub async fn verify(&self, headers: &HeaderMap) -> Result<serde_json::Value, Response> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                unauthorized("this route needs a JWT: send Authorization: Bearer <token>")
            })?;
        let head = jsonwebtoken::decode_header(token)
            .map_err(|e| unauthorized(format!("not a JWT: {e}")))?;
        if !self.config.algorithms.contains(&head.alg) {
            return Err(unauthorized(format!(
                "tokens signed with {:?} are not accepted (http.auth.jwt.algorithms)",
                head.alg
            )));
        }
        let key = match self.key(head.kid.as_deref()) {
            Some(key) => key,
            None => {
                self.refetch().await;
                self.key(head.kid.as_deref())
                    .ok_or_else(|| unauthorized("the token's key (kid) is not in the key set"))?
            }
        };
        let mut validation = Validation::new(head.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.leeway = self.config.leeway.as_secs();
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        match jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
                ErrorKind::InvalidAudience => {
                    format!("the token is not for audience {:?}", self.config.audience)
                }
                ErrorKind::InvalidIssuer => {
                    format!("the token is not from issuer {:?}", self.config.issuer)
                }
                ErrorKind::InvalidSignature => "the token's signature does not verify".to_owned(),
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
                ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
                _ => format!("the token is not valid: {e}"),
            })),
        }
    }

    /// The decoding key for `kid`; a set of one key serves tokens without one.
    fn key(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let jwk = match kid {
            Some(kid) => keys.0.find(kid)?,
            None if keys.0.keys.len() == 1 => &keys.0.keys[0],
            None => return None,
        };
        DecodingKey::from_jwk(jwk).ok()
    }

    /// Fetches a URL's key set again, unless that was done a minute ago.
    async fn refetch(&self) {
        if !matches!(self.config.jwks, JwksSource::Url(_)) {
            return;
        }
        let fetched = self.keys.read().unwrap_or_else(|e| e.into_inner()).1;
        if fetched.elapsed() < self.refetch_after {
            return;
        }
        match load(&self.config.jwks, &self.http).await {
            Ok(keys) => {
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = (keys, Instant::now())
            }
            Err(error) => {
                tracing::warn!(%error, "fetching the JWKS again failed; keeping the keys there are");
                self.keys.write().unwrap_or_else(|e| e.into_inner()).1 = Instant::now();
            }
        }
    }
}

async fn load(source: &JwksSource, http: &reqwest::Client) -> anyhow::Result<JwkSet> {
    use anyhow::Context as _;
    let (bytes, name) = match source {
        JwksSource::File(path) => (
            tokio::fs::read(path).await.with_context(|| {
                format!(
                    "reading the JWKS {} (http.auth.jwt.jwks_file)",
                    path.display()
                )
            })?,
            path.display().to_string(),
        ),
        JwksSource::Url(url) => {
            let response = http
                .get(url)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("fetching the JWKS {url} (http.auth.jwt.jwks_url)"))?;
            let bytes = response
                .bytes()
                .await
                .with_context(|| format!("fetching the JWKS {url} (http.auth.jwt.jwks_url)"))?;
            (bytes.to_vec(), url.clone())
        }
    };
    serde_json::from_slice(&bytes).with_context(|| format!("{name} is not a JWK set"))
}

fn unauthorized(message: impl Into<String>) -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({ "error": message.into() })),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/jwt")
            .join(name)
    }

    fn config(jwks: JwksSource) -> JwtConfig {
        JwtConfig {
            jwks,
            issuer: "https://idp.example".into(),
            audience: "runnel".into(),
            algorithms: vec![Algorithm::RS256, Algorithm::ES256],
            leeway: Duration::from_secs(30),
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// A token for `aud`, signed with the fixture key of `alg` under `kid`.
    fn token(alg: Algorithm, kid: &str, aud: &str) -> HeaderMap {
        let key = match alg {
            Algorithm::RS256 => {
                EncodingKey::from_rsa_der(&std::fs::read(fixture("rs256.der")).unwrap())
            }
            Algorithm::ES256 => {
                EncodingKey::from_ec_der(&std::fs::read(fixture("es256.der")).unwrap())
            }
            other => panic!("no fixture key for {other:?}"),
        };
        let header = Header {
            kid: Some(kid.to_owned()),
            ..Header::new(alg)
        };
        let claims =
            json!({"iss": "https://idp.example", "aud": aud, "sub": "user-7", "exp": now() + 600});
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        bearer(&token)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        headers.insert(header::AUTHORIZATION, value);
        headers
    }

    async fn message(denied: Response) -> String {
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
        let body = axum::body::to_bytes(denied.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        body["error"].as_str().unwrap().to_owned()
    }

    /// RS256 and ES256 tokens verify against the JWKS file, each by its
    /// `kid`; a token under another key's `kid`, or for another audience,
    /// does not.
    #[tokio::test]
    async fn rs256_and_es256_tokens_verify_by_kid() {
        let file = JwksSource::File(fixture("jwks.json"));
        let verifier = JwtVerifier::open(config(file), reqwest::Client::new())
            .await
            .unwrap();
        for (alg, kid) in [(Algorithm::RS256, "rsa-1"), (Algorithm::ES256, "ec-1")] {
            let claims = verifier.verify(&token(alg, kid, "runnel")).await.unwrap();
            assert_eq!(claims["sub"], "user-7", "{alg:?}");
            let wrong = verifier
                .verify(&token(alg, kid, "other"))
                .await
                .unwrap_err();
            assert!(message(wrong).await.contains("audience"), "{alg:?}");
        }
        // An ES256 token presented under the RSA key's id.
        let swapped = verifier
            .verify(&token(Algorithm::ES256, "rsa-1", "runnel"))
            .await;
        assert_eq!(swapped.unwrap_err().status(), StatusCode::UNAUTHORIZED);
        let unknown = verifier
            .verify(&token(Algorithm::RS256, "rsa-9", "runnel"))
            .await;
        assert!(message(unknown.unwrap_err()).await.contains("kid"));
    }

    /// The RSA public key's bytes passed off as an HMAC secret: with HS256
    /// accepted, the token still fails, since a key verifies only its own
    /// family's algorithms.
    #[tokio::test]
    async fn an_rsa_key_is_no_hmac_secret() {
        let mut config = config(JwksSource::File(fixture("jwks.json")));
        config.algorithms.push(Algorithm::HS256);
        let verifier = JwtVerifier::open(config, reqwest::Client::new())
            .await
            .unwrap();
        let jwks: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
        let n = jwks["keys"][0]["n"].as_str().unwrap();
        let header = Header {
            kid: Some("rsa-1".into()),
            ..Header::new(Algorithm::HS256)
        };
        let claims = json!({"iss": "https://idp.example", "aud": "runnel", "exp": now() + 600});
        let forged = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(n.as_bytes()).unwrap(),
        )
        .unwrap();
        let denied = verifier.verify(&bearer(&forged)).await.unwrap_err();
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    }

    /// A key set from a URL: fetched at start, fetched again for a `kid`
    /// it lacks (the provider rotated its keys), and not again sooner than
    /// `refetch_after`, whatever kids the tokens name.
    #[tokio::test]
    async fn a_jwks_url_is_fetched_again_for_an_unknown_kid() {
        let full: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
        let rsa_only = json!({ "keys": [full["keys"][0].clone()] });
        let serving = Arc::new(RwLock::new(rsa_only));
        let fetches = Arc::new(AtomicUsize::new(0));
        let app = {
            let (serving, fetches) = (serving.clone(), fetches.clone());
            axum::Router::new().route(
                "/jwks.json",
                axum::routing::get(move || {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let body = serving.read().unwrap().clone();
                    async move { axum::Json(body) }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let mut verifier = JwtVerifier::open(config(JwksSource::Url(url)), reqwest::Client::new())
            .await
            .unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        verifier
            .verify(&token(Algorithm::RS256, "rsa-1", "runnel"))
            .await
            .unwrap();
        let es = token(Algorithm::ES256, "ec-1", "runnel");
        // Not yet in the set, and fetched a moment ago: refused unfetched.
        assert!(verifier.verify(&es).await.is_err());
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        *serving.write().unwrap() = full;
        verifier.refetch_after = Duration::ZERO;
        verifier.verify(&es).await.unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        verifier.refetch_after = REFETCH_AFTER;
        assert!(
            verifier
                .verify(&token(Algorithm::ES256, "ec-2", "runnel"))
                .await
                .is_err()
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "at most once a minute");
    }
}
