//! The runtime's limits with the `probe` test component: a loop is stopped
//! by the timeout, a runaway allocation by the memory limit, a panic is a
//! trap with its message; each is classified, and the same function keeps
//! serving afterwards.

mod harness;

use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel::event::Event;
use runnel::runtime::{
    Context, FunctionConfig, FunctionLocation, InvokeError, LogLabel, Runtime, RuntimeSettings,
    build,
};

fn event(data: &'static str) -> Event {
    Event {
        id: "e1".into(),
        source: "test".into(),
        event_type: "runnel.message".into(),
        subject: Some("k".into()),
        content_type: Some("text/plain".into()),
        attributes: Default::default(),
        data: Bytes::from_static(data.as_bytes()),
        idempotency_key: "e1".into(),
    }
}

fn context() -> Context {
    Context {
        pipeline: "limits".into(),
        config: vec![("sink".into(), "out".into())],
        sinks: vec![("out".into(), "topic".into(), "out".into())],
        attempt: 1,
    }
}

/// Timeout, out-of-memory and trap are told apart, and the function still
/// works after each.
#[test]
fn limits_stop_runaway_functions_and_are_classified() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let crate_dir = harness::repo().join("functions/testing/probe");
    let wasm = build::build_crate(&crate_dir).expect("probe builds");
    let config = FunctionConfig {
        name: "probe".into(),
        location: FunctionLocation::Project {
            dir: crate_dir,
            language: build::Language::Rust,
        },
        memory_limit: 32 << 20,
        timeout: Duration::from_millis(300),
        config: vec![],
        max_outputs: runnel::runtime::DEFAULT_MAX_OUTPUTS,
        max_output_bytes: runnel::runtime::DEFAULT_MAX_OUTPUT_BYTES,
        variables: Default::default(),
        capabilities: Default::default(),
    };
    let runtime = Runtime::new(&RuntimeSettings {
        pooling: true,
        max_instances: 4,
        max_memory: 32 << 20,
        // More than the probe's residue check dirties: reused memory is
        // zeroed by memset, the path that must not leak between events.
        keep_resident: 16 << 20,
        cache_dir: None,
    })
    .unwrap();
    assert!(runtime.pooling(), "the pooling allocator is available here");
    let function = runtime.load(&config, &wasm).unwrap();
    let invoke = |data| function.invoke(&context(), &event(data), LogLabel::default());

    let (result, stats) = invoke("hello");
    let outputs = result.expect("echo works");
    assert_eq!(outputs.len(), 1);
    assert_eq!(&outputs[0].data[..], b"hello");
    assert_eq!(outputs[0].sink, "out");
    assert!(stats.instantiation < stats.duration);

    let started = Instant::now();
    let (result, _) = invoke("mode:spin");
    let elapsed = started.elapsed();
    assert!(matches!(result, Err(InvokeError::Timeout(_))), "{result:?}");
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );

    let (result, stats) = invoke("mode:hog");
    assert!(
        matches!(result, Err(InvokeError::OutOfMemory { limit }) if limit == 32 << 20),
        "{result:?}"
    );
    assert!(stats.peak_memory <= 32 << 20);
    assert_eq!(result.unwrap_err().outcome(), "oom");

    let (result, _) = invoke("mode:trap");
    match result {
        Err(error @ InvokeError::Trap(_)) => {
            assert_eq!(error.outcome(), "trap");
            assert!(!error.retryable());
        }
        other => panic!("expected a trap, got {other:?}"),
    }

    let (result, _) = invoke("mode:fail");
    assert!(
        matches!(
            result,
            Err(InvokeError::Function {
                retryable: true,
                ..
            })
        ),
        "{result:?}"
    );

    // A fresh instance per event: nothing an event wrote (a static counter,
    // 8 MiB of heap) is there for the next one, though the slot's memory
    // stays resident and is reused.
    for _ in 0..3 {
        let (result, _) = invoke("mode:residue");
        assert_eq!(
            &result.expect("residue check works")[0].data[..],
            b"events before: 0, dirty pages: 0"
        );
    }

    let (result, _) = invoke("after all that");
    assert_eq!(
        &result.expect("still serving")[0].data[..],
        b"after all that"
    );
}
