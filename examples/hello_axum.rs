//! Benchmark #8's physical limit: a plain axum "hello" handler in native
//! Rust, served the way runnel serves its API (axum on tokio's
//! multi-threaded runtime), answering what the hello-http component
//! answers. `cargo run --release --example hello_axum -- 127.0.0.1:8088`.

use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8088".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    let hello = || async {
        (
            [("content-type", "text/plain; charset=utf-8")],
            "Hello, world!\n",
        )
    };
    let app = Router::new().route("/hello", get(hello));
    axum::serve(listener, app).await.expect("serve");
}
