//! A test guest for runnel's batch tests and benchmark, not a function
//! anyone deploys.
//!
//! It takes its events in batches (`handle-batch`) and answers for each:
//! an event whose payload is `reject` fails for good, `retry` fails as
//! retryable, `trap` traps (failing the whole batch); any other is echoed
//! to the sink `out` under the event's subject, with the size of the batch
//! it came in as the attribute `batch-size`. With `[function.config] mode =
//! "noop"` it writes nothing (the benchmark's no-op).

use runnel_sdk::batch::Guest;
use runnel_sdk::{Context, Error, Event, Output};

struct BatchProbe;

runnel_sdk::batch::export!(BatchProbe);

impl Guest for BatchProbe {
    fn handle_batch(ctx: Context, events: Vec<Event>) -> Vec<Result<Vec<Output>, Error>> {
        let noop = ctx.config("mode") == Some("noop");
        let size = events.len().to_string();
        events
            .into_iter()
            .map(|event| match &event.data[..] {
                b"reject" => Err(Error::reject(format!("{} was rejected", event.describe()))),
                b"retry" => Err(Error::retry(format!(
                    "{} asked to be retried",
                    event.describe()
                ))),
                b"trap" => panic!("{} asked for a trap", event.describe()),
                _ if noop => Ok(Vec::new()),
                _ => Ok(vec![
                    Output::new("out", event.data)
                        .with_key(event.subject)
                        .with_attribute("batch-size", size.clone()),
                ]),
            })
            .collect()
    }
}
