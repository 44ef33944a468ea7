//! The `notify` function: tells people their thumbnails are ready.
//!
//! It reads the JSON report the `thumbnail` function publishes (typically
//! on the `image-processed` topic) and writes one notification, a short
//! message plus the report's source and thumbnail list, to each configured
//! notification sink the pipeline declares.
//!
//! # Layout
//! - `handler`: the WIT boundary: event and context in, outputs or an error out.
//! - `config`: the `sinks` key.
//! - `notification`: the report read in and the notification written out.

mod config;
mod handler;
mod notification;

use runnel_sdk::{Context, Error, Event, Guest, Output};

struct Notify;

runnel_sdk::export!(Notify);

impl Guest for Notify {
    fn handle(ctx: Context, event: Event) -> Result<Vec<Output>, Error> {
        let handled = handler::handle(&ctx, &event)?;
        runnel_sdk::log::info(&handled.summary);
        Ok(handled.outputs)
    }
}
