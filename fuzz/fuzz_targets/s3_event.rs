//! Any bytes as an S3 event notification (from SQS, a topic or the
//! webhook endpoint): object-created events or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(events) = runnel::storage::s3_events::decode(body) {
        for event in events {
            // The key every decoded event is deduplicated by.
            let _ = event.idempotency_key();
        }
    }
});
