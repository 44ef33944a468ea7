//! Runs the thumbnail core over every image in `tests/fixtures/images/`, the
//! same files runnel's end-to-end tests upload, checking sizes, formats and
//! (where the fixture was drawn for it) colours.
//!
//! Set `THUMBNAIL_DUMP_DIR=/some/dir` to also write the thumbnails there and
//! look at them.

use std::path::PathBuf;

use image::DynamicImage;

use crate::decode::DecodeError;
use crate::encode::OutputFormat;
use crate::thumbnails::{MakeError, Thumbnail, make};

const WIDTHS: [u32; 3] = [128, 512, 1024];

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/images")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Thumbnails of fixture `name`, checked to decode to their announced size and format.
fn thumbnails(name: &str) -> Vec<(Thumbnail, DynamicImage)> {
    let (_, thumbnails) =
        make(&fixture(name), &WIDTHS, 80).unwrap_or_else(|e| panic!("{name}: {e}"));
    thumbnails
        .into_iter()
        .map(|t| {
            let decoded = image::load_from_memory(&t.data).unwrap();
            assert_eq!(
                (decoded.width(), decoded.height()),
                (t.width, t.height),
                "{name}"
            );
            let expected = match t.format {
                OutputFormat::Jpeg => image::ImageFormat::Jpeg,
                OutputFormat::Png => image::ImageFormat::Png,
            };
            assert_eq!(image::guess_format(&t.data).unwrap(), expected, "{name}");
            if let Ok(dir) = std::env::var("THUMBNAIL_DUMP_DIR") {
                let file = format!("{name}-{}.{}", t.width, t.format.extension());
                std::fs::write(PathBuf::from(dir).join(file), &t.data).unwrap();
            }
            (t, decoded)
        })
        .collect()
}

fn sizes(thumbnails: &[(Thumbnail, DynamicImage)]) -> Vec<(u32, u32, OutputFormat)> {
    thumbnails
        .iter()
        .map(|(t, _)| (t.width, t.height, t.format))
        .collect()
}

fn pixel(image: &DynamicImage, x: u32, y: u32) -> [u8; 3] {
    image.to_rgb8().get_pixel(x, y).0
}

/// True when every channel of `actual` is within `tolerance` of `expected`.
fn near(actual: [u8; 3], expected: [u8; 3], tolerance: u8) -> bool {
    actual
        .iter()
        .zip(expected)
        .all(|(a, e)| a.abs_diff(e) <= tolerance)
}

use OutputFormat::{Jpeg, Png};

/// Baseline and progressive encodings of one picture give the same thumbnails.
#[test]
fn baseline_and_progressive_jpeg() {
    let baseline = thumbnails("baseline.jpg");
    let progressive = thumbnails("progressive.jpg");
    assert_eq!(sizes(&baseline), vec![(128, 96, Jpeg), (512, 384, Jpeg)]);
    assert_eq!(sizes(&progressive), sizes(&baseline));
    let (a, b) = (baseline[0].1.to_rgb8(), progressive[0].1.to_rgb8());
    let total: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    let mean = total as f64 / a.as_raw().len() as f64;
    assert!(mean < 3.0, "mean difference {mean}");
}

/// A grayscale JPEG becomes an RGB JPEG that is still gray.
#[test]
fn grayscale_jpeg() {
    let thumbnails = thumbnails("gray.jpg");
    assert_eq!(sizes(&thumbnails), vec![(128, 96, Jpeg)]);
    let image = &thumbnails[0].1;
    assert_eq!(image.color(), image::ColorType::Rgb8);
    for (x, y) in [(10, 10), (64, 48), (100, 80)] {
        let [r, g, b] = pixel(image, x, y);
        assert!(
            r.abs_diff(g) <= 2 && g.abs_diff(b) <= 2,
            "({x},{y}) = {r},{g},{b}"
        );
    }
}

/// A CMYK JPEG (Adobe YCCK, inverted) comes out in the right colours, not negated.
#[test]
fn cmyk_jpeg_colours() {
    let thumbnails = thumbnails("cmyk.jpg");
    assert_eq!(sizes(&thumbnails), vec![(128, 96, Jpeg)]);
    let image = &thumbnails[0].1;
    // The patches are 80x60 of 320x240, so 32x24 here; sample their middles.
    for ((x, y), colour) in [
        ((14, 10), [255, 0, 0]),
        ((114, 10), [0, 255, 0]),
        ((14, 86), [0, 0, 255]),
        ((114, 86), [255, 255, 0]),
    ] {
        let actual = pixel(image, x, y);
        assert!(
            near(actual, colour, 40),
            "({x},{y}) = {actual:?}, want {colour:?}"
        );
    }
}

/// EXIF orientation 6: stored 600x400, shown 400x600, and the block drawn in the
/// stored top-left corner ends up top-right.
#[test]
fn exif_orientation_6() {
    let thumbnails = thumbnails("exif-orientation-6.jpg");
    assert_eq!(sizes(&thumbnails), vec![(128, 192, Jpeg)]);
    let image = &thumbnails[0].1;
    // 100 px of 400 upright → 32 px of 128.
    assert!(near(pixel(image, 128 - 12, 12), [255, 0, 0], 40));
    assert!(!near(pixel(image, 12, 12), [255, 0, 0], 60));
    assert!(!near(pixel(image, 128 - 12, 192 - 12), [255, 0, 0], 60));
}

/// A 16-bit PNG becomes an 8-bit JPEG with its gradients where they were.
#[test]
fn png_16_bit() {
    let thumbnails = thumbnails("rgb16.png");
    assert_eq!(sizes(&thumbnails), vec![(128, 96, Jpeg)]);
    let image = &thumbnails[0].1;
    // Red ramps up left to right, green down top to bottom, blue is 40%.
    assert!(
        near(pixel(image, 2, 2), [0, 255, 102], 12),
        "{:?}",
        pixel(image, 2, 2)
    );
    assert!(
        near(pixel(image, 125, 93), [255, 0, 102], 12),
        "{:?}",
        pixel(image, 125, 93)
    );
}

/// A PNG with real transparency stays a PNG with transparency.
#[test]
fn alpha_png() {
    let thumbnails = thumbnails("alpha.png");
    assert_eq!(sizes(&thumbnails), vec![(128, 96, Png)]);
    let rgba = thumbnails[0].1.to_rgba8();
    assert!(rgba.pixels().any(|p| p[3] == 0));
    assert!(rgba.pixels().any(|p| p[3] == 255));
    assert!(
        rgba.pixels().any(|p| p[3] > 100 && p[3] < 155),
        "the half-transparent bar"
    );
}

/// An image narrower than every width yields one thumbnail at its own size.
#[test]
fn small_png() {
    assert_eq!(sizes(&thumbnails("small.png")), vec![(100, 80, Jpeg)]);
}

/// WebP decodes.
#[test]
fn webp() {
    assert_eq!(sizes(&thumbnails("photo.webp")), vec![(128, 96, Jpeg)]);
}

/// An animated GIF is thumbnailed from its first (red) frame.
#[test]
fn animated_gif_first_frame() {
    let thumbnails = thumbnails("anim.gif");
    assert_eq!(sizes(&thumbnails), vec![(128, 96, Jpeg)]);
    assert!(near(pixel(&thumbnails[0].1, 64, 48), [255, 0, 0], 30));
}

/// A JPEG cut in half is refused, not rendered with a gray bottom.
#[test]
fn truncated_jpeg() {
    let err = make(&fixture("truncated.jpg"), &WIDTHS, 80).unwrap_err();
    assert!(
        matches!(err, MakeError::Decode(DecodeError::TruncatedJpeg)),
        "{err}"
    );
}

/// Text named `.jpg` is refused by content, not accepted by name.
#[test]
fn not_an_image() {
    let err = make(&fixture("not-an-image.jpg"), &WIDTHS, 80).unwrap_err();
    assert!(
        matches!(err, MakeError::Decode(DecodeError::Unsupported(_))),
        "{err}"
    );
}

/// Truncated PNG, WebP and GIF are refused too (their decoders are strict).
/// Only the first GIF frame is read, so a GIF is cut inside it.
#[test]
fn other_truncated_formats() {
    for (name, keep) in [
        ("rgb16.png", 0.5),
        ("alpha.png", 0.5),
        ("photo.webp", 0.5),
        ("anim.gif", 0.2),
    ] {
        let whole = fixture(name);
        let cut = (whole.len() as f64 * keep) as usize;
        assert!(
            make(&whole[..cut], &WIDTHS, 80).is_err(),
            "{name} cut at {cut} was accepted"
        );
    }
}
