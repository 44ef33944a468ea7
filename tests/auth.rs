//! `[http.auth]` from the outside: API keys with scopes on every route,
//! HTTP functions' routes included, and no anonymous serving on a
//! reachable address unless asked for.

mod harness;

use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{Runnel, repo};

const UPLOADER: &str = "uploader-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcdef";

fn keys() -> String {
    format!(
        r#"
[http.auth.keys.uploader]
token = "{UPLOADER}"
scopes = ["objects:write:uploads", "invoke:hello-http"]
[http.auth.keys.reader]
token_sha256 = "{}"
scopes = ["objects:read:*", "metrics"]
"#,
        sha256_hex(READER)
    )
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn plain_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// No key is 401 with `WWW-Authenticate`, a key without the route's scope
/// 403 naming it, the right key passes; probes stay open.
#[tokio::test]
async fn keys_and_scopes_guard_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let runnel = Runnel::start(
        dir.path(),
        &[repo().join("pipelines/hello-http.toml")],
        &[],
        &keys(),
    )
    .await;
    let client = plain_client();
    let url = runnel.url("/v1/objects/uploads/a.txt");

    let response = client.put(&url).body("hi").send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = client
        .put(&url)
        .bearer_auth("not-a-key-0123456789abcdef")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = client
        .put(&url)
        .bearer_auth(READER)
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body = response.text().await.unwrap();
    assert!(body.contains("objects:write:uploads"), "{body}");
    let response = client
        .put(&url)
        .bearer_auth(UPLOADER)
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let response = client.get(&url).bearer_auth(UPLOADER).send().await.unwrap();
    assert_eq!(response.status(), 403, "the uploader cannot read");
    let response = client.get(&url).bearer_auth(READER).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hi");

    let metrics = runnel.url("/metrics");
    assert_eq!(client.get(&metrics).send().await.unwrap().status(), 401);
    assert_eq!(
        client
            .get(&metrics)
            .bearer_auth(READER)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for probe in ["/healthz", "/livez", "/readyz"] {
        let status = client.get(runnel.url(probe)).send().await.unwrap().status();
        assert_eq!(status, 200, "{probe}");
    }

    // An HTTP function's routes need `invoke:<pipeline>` by default.
    let hello = runnel.url("/hello/Ada");
    assert_eq!(client.get(&hello).send().await.unwrap().status(), 401);
    assert_eq!(
        client
            .get(&hello)
            .bearer_auth(READER)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let response = client
        .get(&hello)
        .bearer_auth(UPLOADER)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "Hello, Ada!\n");
    let text = client
        .get(&metrics)
        .bearer_auth(READER)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ok = [
        ("pipeline", "hello-http"),
        ("function", "hello-http"),
        ("outcome", "ok"),
    ];
    assert_eq!(
        harness::metric_value(&text, "runnel_invocations_total", &ok),
        1.0,
        "refused requests ran nothing"
    );
}

/// A route with `auth = "none"` is public even when keys exist.
#[tokio::test]
async fn a_public_route_needs_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = harness::edited_pipeline(
        "hello-http.toml",
        &dir.path().join("pipelines"),
        &[("[source]\n", "[source]\nauth = \"none\"\n")],
    );
    let runnel = Runnel::start(dir.path(), &[pipeline], &[], &keys()).await;
    let response = plain_client()
        .get(runnel.url("/hello/Ada"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Listening where other hosts can reach it with no keys is refused at
/// start, naming the settings; `allow_anonymous = true` says it is meant.
#[tokio::test]
async fn anonymous_on_a_reachable_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let run = |extra: &str| {
        let config = dir.path().join("runnel.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[http]\nlisten = \"0.0.0.0:{port}\"\n{extra}",
                dir.path().join("data")
            ),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_runnel"))
            .arg("--config")
            .arg(&config)
            .arg("up")
            .arg(repo().join("pipelines/notify.toml"))
            .env_remove("NOTIFY_WEBHOOK_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let refused = run("").wait_with_output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("http.auth") && stderr.contains("allow_anonymous"),
        "{stderr}"
    );

    let mut allowed = run("[http.auth]\nallow_anonymous = true\n");
    let client = plain_client();
    let up = harness::eventually(
        "runnel to serve anonymously",
        Duration::from_secs(120),
        || async {
            let response = client
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
                .ok()?;
            (response.status() == 200).then_some(())
        },
    );
    up.await;
    allowed.kill().unwrap();
    allowed.wait().unwrap();
}

const JWT_SECRET: &[u8] = b"a-shared-hs256-secret-for-tests-only";

fn jwt(claims: serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A route with `auth = "jwt"` lets in a token the JWKS verifies, from the
/// issuer, for the audience, not expired, and hands the function its
/// claims (never the token); anything else is 401 saying why.
#[tokio::test]
async fn jwt_routes_check_signature_issuer_audience_and_expiry() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(JWT_SECRET);
    let set = serde_json::json!({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": k}]});
    std::fs::write(&jwks, set.to_string()).unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    let text = format!(
        "name = \"probe\"\n[source]\ntype = \"http\"\nroutes = [\"/me/...\"]\nauth = \"jwt\"\n\
         [function]\npath = {:?}\n",
        repo().join("functions/testing/http-probe")
    );
    std::fs::write(pipelines.join("probe.toml"), text).unwrap();
    let extra = format!(
        "[http.auth.jwt]\njwks_file = {jwks:?}\nissuer = \"https://idp.example\"\n\
         audience = \"runnel-tests\"\nalgorithms = [\"HS256\"]\nleeway = \"1s\"\n"
    );
    let runnel = Runnel::start(dir.path(), &[pipelines.join("probe.toml")], &[], &extra).await;
    let client = plain_client();
    let call = |token: Option<String>| {
        let mut request = client.get(runnel.url("/me/echo"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let good = serde_json::json!({
        "sub": "user-42", "iss": "https://idp.example", "aud": "runnel-tests", "exp": now() + 600,
    });
    let (status, body) = call(Some(jwt(good.clone()))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("runnel-jwt-sub: user-42"), "{body}");
    assert!(
        !body.to_ascii_lowercase().contains("authorization"),
        "the token stays out: {body}"
    );

    let mut expired = good.clone();
    expired["exp"] = (now() - 120).into();
    let (status, body) = call(Some(jwt(expired))).await;
    assert_eq!(status, 401);
    assert!(body.contains("expired"), "{body}");
    let mut audience = good.clone();
    audience["aud"] = "someone-else".into();
    let (status, body) = call(Some(jwt(audience))).await;
    assert_eq!(status, 401);
    assert!(body.contains("audience"), "{body}");
    let mut issuer = good.clone();
    issuer["iss"] = "https://evil.example".into();
    assert_eq!(call(Some(jwt(issuer))).await.0, 401);
    let forged = {
        let key = jsonwebtoken::EncodingKey::from_secret(b"another-secret-entirely-0000").unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &good, &key).unwrap()
    };
    let (status, body) = call(Some(forged)).await;
    assert_eq!(status, 401);
    assert!(body.contains("signature"), "{body}");
    assert_eq!(call(None).await.0, 401);
}
