//! The thumbnail function's core: an image's bytes and the wanted widths in,
//! encoded thumbnails out. No WIT types and no I/O, so it runs (and is
//! tested) natively as well as in the component.

use std::fmt;

use image::ImageError;

use crate::decode::{self, DecodeError, Pixels};
use crate::encode::{self, OutputFormat};
use crate::resize;

/// One encoded thumbnail, upright.
#[derive(Debug, Clone)]
pub struct Thumbnail {
    pub width: u32,
    pub height: u32,
    pub format: OutputFormat,
    pub data: Vec<u8>,
}

/// Why no thumbnails could be made.
#[derive(Debug)]
pub enum MakeError {
    Decode(DecodeError),
    /// Writing a JPEG or PNG to memory failed; not expected to happen.
    Encode(ImageError),
}

impl fmt::Display for MakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MakeError::Decode(e) => e.fmt(f),
            MakeError::Encode(e) => write!(f, "cannot encode thumbnail ({e})"),
        }
    }
}

/// What the image was, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Upright dimensions.
    pub width: u32,
    pub height: u32,
}

/// Makes the thumbnails `widths` call for (see [`resize::plan`]), smallest first.
pub fn make(
    bytes: &[u8],
    widths: &[u32],
    quality: u8,
) -> Result<(Source, Vec<Thumbnail>), MakeError> {
    // The largest thumbnail is the last of the plan.
    let decoded = decode::decode(bytes, |upright| {
        resize::plan(widths, upright).last().copied()
    })
    .map_err(MakeError::Decode)?;
    let (width, height) = decoded.upright_dimensions();
    let swaps_axes = decode::swaps_axes(decoded.orientation);
    let icc_profile = decoded.rgb_icc_profile.as_deref();
    // Scale in the stored frame and turn only the small result upright:
    // rotating the full-size image first would copy all of it.
    let stored = |(w, h)| if swaps_axes { (h, w) } else { (w, h) };

    // JPEG planes stay planes; anything else is prepared once for its format.
    let (format, pixels) = match decoded.pixels {
        Pixels::Image(image) => {
            let format = OutputFormat::for_image(&image);
            (format, Pixels::Image(format.prepare(image)))
        }
        planes @ Pixels::YCbCr(_) => (OutputFormat::Jpeg, planes),
    };
    let mut thumbnails = Vec::new();
    for (w, h) in resize::plan(widths, (width, height)) {
        let (stored_w, stored_h) = stored((w, h));
        let data = match &pixels {
            Pixels::YCbCr(planes) => planes
                .thumbnail(
                    stored_w,
                    stored_h,
                    decoded.orientation,
                    quality,
                    icc_profile,
                )
                .map_err(|e| MakeError::Encode(encode::jpeg_error(e)))?,
            Pixels::Image(image) => {
                let mut small = resize::resize(image, stored_w, stored_h);
                small.apply_orientation(decoded.orientation);
                format
                    .encode(&small, quality, icc_profile)
                    .map_err(MakeError::Encode)?
            }
        };
        thumbnails.push(Thumbnail {
            width: w,
            height: h,
            format,
            data,
        });
    }
    Ok((Source { width, height }, thumbnails))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, ImageBuffer, Rgb, Rgba};
    use std::io::Cursor;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = ImageBuffer::from_fn(width, height, |x, y| Rgb([x as u8, y as u8, 128u8]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(image)
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    }

    fn png(image: DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn decoded_size(thumbnail: &Thumbnail) -> (u32, u32) {
        let image = image::load_from_memory(&thumbnail.data).unwrap();
        (image.width(), image.height())
    }

    /// Every thumbnail is what it claims to be: dimensions and format.
    #[test]
    fn thumbnails_match_their_description() {
        let (source, thumbnails) = make(&jpeg(640, 480), &[1024, 512, 128], 80).unwrap();
        assert_eq!(
            source,
            Source {
                width: 640,
                height: 480
            }
        );
        let sizes: Vec<_> = thumbnails.iter().map(|t| (t.width, t.height)).collect();
        assert_eq!(sizes, vec![(128, 96), (512, 384)]);
        for t in &thumbnails {
            assert_eq!(t.format, OutputFormat::Jpeg);
            assert_eq!(decoded_size(t), (t.width, t.height));
        }
    }

    /// An image smaller than every width yields exactly one thumbnail, not upscaled.
    #[test]
    fn small_image_yields_one_thumbnail_at_its_size() {
        let (_, thumbnails) = make(&jpeg(100, 80), &[128, 512, 1024], 80).unwrap();
        assert_eq!(thumbnails.len(), 1);
        assert_eq!((thumbnails[0].width, thumbnails[0].height), (100, 80));
        assert_eq!(decoded_size(&thumbnails[0]), (100, 80));
    }

    /// A PNG with real transparency stays PNG, and keeps its alpha.
    #[test]
    fn alpha_png_stays_png() {
        let image = ImageBuffer::from_fn(200, 100, |x, _| Rgba([255u8, 0, 0, (x % 256) as u8]));
        let (_, thumbnails) = make(&png(DynamicImage::ImageRgba8(image)), &[128], 80).unwrap();
        assert_eq!(thumbnails[0].format, OutputFormat::Png);
        let decoded = image::load_from_memory(&thumbnails[0].data).unwrap();
        assert!(decoded.color().has_alpha());
    }

    /// A PNG whose alpha is opaque everywhere, or that has none, becomes JPEG.
    #[test]
    fn opaque_png_becomes_jpeg() {
        let with_alpha = ImageBuffer::from_pixel(200, 100, Rgba([1u8, 2, 3, 255]));
        let (_, thumbnails) = make(&png(DynamicImage::ImageRgba8(with_alpha)), &[128], 80).unwrap();
        assert_eq!(thumbnails[0].format, OutputFormat::Jpeg);

        let without = ImageBuffer::from_pixel(200, 100, Rgb([1u8, 2, 3]));
        let (_, thumbnails) = make(&png(DynamicImage::ImageRgb8(without)), &[128], 80).unwrap();
        assert_eq!(thumbnails[0].format, OutputFormat::Jpeg);
    }

    /// Bytes that are no image fail as unsupported; a cut-off image as undecodable.
    #[test]
    fn garbage_fails() {
        let err = make(b"GIF? no, plain text", &[128], 80).unwrap_err();
        assert!(
            matches!(err, MakeError::Decode(DecodeError::Unsupported(_))),
            "{err}"
        );
        let whole = jpeg(300, 200);
        let err = make(&whole[..whole.len() / 2], &[128], 80).unwrap_err();
        assert!(
            matches!(err, MakeError::Decode(DecodeError::TruncatedJpeg)),
            "{err}"
        );
    }
}
