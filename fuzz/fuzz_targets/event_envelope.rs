//! Any bytes as the event envelope of a dead-letter record (what
//! `runnel dlq replay` reads back): an event that survives a round trip
//! unchanged, or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel::event::Event;

fuzz_target!(|json: &[u8]| {
    if let Ok(event) = serde_json::from_slice::<Event>(json) {
        let again = serde_json::to_vec(&event).expect("an event serializes");
        let back: Event = serde_json::from_slice(&again).expect("its own JSON parses");
        assert_eq!(back, event);
    }
});
