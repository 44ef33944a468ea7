//! What a function may import, and the error when it imports more.
//!
//! Every function is linked with runnel's own interfaces, WASI 0.2's
//! cli, clocks, filesystem, io, random and sockets interfaces, all empty of
//! authority (no directories, environment, sockets or real clocks), and
//! `wasi:http`'s outgoing handler, whose requests are refused unless the
//! pipeline grants `http`; an HTTP function gets `wasi:http`'s incoming
//! side too. Anything else a component
//! imports is refused when it is loaded, naming the interface and what
//! would grant it, instead of the linker's generic message.

use wasmtime::Engine;
use wasmtime::component::Component;

/// The interfaces a grant of runnel's would provide, by name prefix.
const GRANTS: [(&str, &str); 4] = [
    (
        "wasi:http/",
        "runnel links wasi:http's `types` and `outgoing-handler` at 0.2.x (outbound HTTP, granted by `[function.capabilities] http`), and nothing else of wasi:http in an event function",
    ),
    (
        "wasi:keyvalue/",
        "key-value state, which runnel grants as its own runnel:function/kv (`[function.capabilities] kv`), not as wasi:keyvalue",
    ),
    (
        "wasi:config/",
        "configuration; runnel hands a function its [function.config] in the context of each event instead",
    ),
    ("runnel:", "an interface of a newer runnel than this one"),
];

/// The import `error` (from linking `component`) names, explained; `None`
/// when the error is not about a missing import.
pub fn unlinked_import(
    engine: &Engine,
    component: &Component,
    error: &wasmtime::Error,
) -> Option<String> {
    let text = format!("{error:#}");
    if !text.contains("matching implementation was not found") {
        return None;
    }
    let import = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .find(|name| text.contains(&format!("`{name}`")))?;
    let grant = GRANTS
        .iter()
        .find(|(prefix, _)| import.starts_with(prefix))
        .map(|(_, grant)| *grant)
        .unwrap_or(
            "runnel grants nothing that provides it (a function may import runnel:function/log, runnel:function/variables, runnel:function/kv, wasi:http/outgoing-handler and WASI 0.2's cli, clocks, filesystem, io, random and sockets interfaces, all empty of authority)",
        );
    Some(format!(
        "it imports `{import}`, which is not granted: {grant}"
    ))
}
