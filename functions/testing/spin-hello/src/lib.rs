use spin_sdk::http::{IntoResponse, Params, Request, Response, Router};
use spin_sdk::http_component;

#[http_component]
fn handle(request: Request) -> Response {
    let mut router = Router::suffix();
    router.get("/hello/:name", hello);
    router.post("/echo", echo);
    router.handle(request)
}

fn hello(request: Request, params: Params) -> anyhow::Result<impl IntoResponse> {
    let route = request
        .header("spin-matched-route")
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(format!(
            "Hello, {}! (route {route})\n",
            params.get("name").unwrap_or("?")
        ))
        .build())
}

fn echo(request: Request, _: Params) -> anyhow::Result<impl IntoResponse> {
    Ok(Response::new(200, request.body().to_vec()))
}
