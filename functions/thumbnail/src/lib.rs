//! The `thumbnail` function: makes resized copies of an uploaded image and
//! reports what it wrote.
//!
//! It reads an object-created event from a storage source, writes one
//! JPEG (or, for images with transparency, PNG) per configured width to the
//! thumbnail sink, next to the source's key, and then one JSON report to the
//! result sink, for whatever runs after it (see the `notify` function).
//!
//! # Layout
//! - `handler`: the WIT boundary: event and context in, outputs or an error out.
//! - `config`: the `[function.config]` keys and their defaults.
//! - `report`: the JSON written to the result sink.
//! - `key`: the naming of thumbnail keys.
//! - `thumbnails`: the pure core, bytes in and encoded thumbnails out, using
//!   `decode` (format sniffing, EXIF orientation; `jpeg_end` catches cut-off
//!   JPEGs), `resize` (which sizes, and the scaling) and `encode` (JPEG or PNG);
//!   a JPEG shrunk on load goes through `ycbcr` instead, its planes resized
//!   one by one and encoded without converting to RGB.
//! - `fixtures` (tests only): the core over `tests/fixtures/images/`.

mod config;
mod decode;
mod encode;
mod handler;
mod jpeg_end;
mod key;
mod report;
mod resize;
pub mod thumbnails;
mod ycbcr;

#[cfg(test)]
mod fixtures;

use runnel_sdk::{Context, Error, Event, Guest, Output};

struct ThumbnailFunction;

runnel_sdk::export!(ThumbnailFunction);

impl Guest for ThumbnailFunction {
    fn handle(ctx: Context, event: Event) -> Result<Vec<Output>, Error> {
        let handled = handler::handle(&ctx, &event)?;
        runnel_sdk::log::info(&handled.summary);
        Ok(handled.outputs)
    }
}
