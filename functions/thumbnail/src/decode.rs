//! Turning an uploaded object's bytes into pixels.
//!
//! The format is sniffed from the bytes, never taken from the key or the
//! content type: uploads are often misnamed. The EXIF orientation is read but
//! not applied here, because rotating the full-size image would copy it;
//! [`crate::thumbnails`] applies it to each small thumbnail instead.

use std::fmt;
use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

use crate::jpeg_end;

/// Largest image decoded, in pixels (a 50-megapixel camera still fits).
/// Past it, a clear "too large" beats an out-of-memory trap for whoever reads
/// the dead letter. Below it, memory is the pipeline's `memory_limit`: a
/// 12-megapixel JPEG peaks at about 52 MB, roughly 4.5 bytes a pixel.
pub const MAX_PIXELS: u64 = 64_000_000;

/// A decoded image as stored, plus how to turn it upright.
pub struct Decoded {
    pub image: DynamicImage,
    pub orientation: Orientation,
    /// The embedded ICC profile when it describes RGB, so thumbnails of wide-gamut
    /// (e.g. Display P3) photos keep their colours. A CMYK or gray profile is
    /// dropped: the thumbnails are RGB and such a profile would misdescribe them.
    pub rgb_icc_profile: Option<Vec<u8>>,
}

impl Decoded {
    /// Width and height once the orientation is applied.
    pub fn upright_dimensions(&self) -> (u32, u32) {
        let (w, h) = (self.image.width(), self.image.height());
        if swaps_axes(self.orientation) {
            (h, w)
        } else {
            (w, h)
        }
    }
}

/// True for the orientations that turn the image a quarter.
pub fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Why bytes are not a usable image. None of these improve on retry.
#[derive(Debug)]
pub enum DecodeError {
    /// Not an image format this function reads (or not an image at all).
    Unsupported(ImageError),
    /// A known format, but corrupt or truncated.
    Invalid(ImageError),
    /// A JPEG that stops before its end (see [`jpeg_end`]).
    TruncatedJpeg,
    TooLarge {
        width: u32,
        height: u32,
    },
    /// The header declares a size the decoder refuses to allocate for
    /// (a decompression bomb), before we could read the dimensions.
    OverLimit,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Unsupported(e) => {
                write!(f, "not a supported image ({})", lowercase_first(e))
            }
            DecodeError::Invalid(e) => write!(f, "cannot decode image ({})", lowercase_first(e)),
            DecodeError::TruncatedJpeg => {
                write!(
                    f,
                    "cannot decode image (JPEG data ends before the end-of-image marker: truncated)"
                )
            }
            DecodeError::TooLarge { width, height } => write!(
                f,
                "image is {width}x{height}, larger than the {MAX_PIXELS}-pixel limit"
            ),
            DecodeError::OverLimit => write!(
                f,
                "image declares a size beyond the {MAX_PIXELS}-pixel limit; refused before decoding"
            ),
        }
    }
}

/// image's messages start with a capital; ours are mid-sentence.
fn lowercase_first(e: &ImageError) -> String {
    let text = e.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Decodes the first frame of `bytes`, whatever supported format they are in.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    // Without a recognised signature, `into_decoder` fails as Unsupported.
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .expect("reading from memory cannot fail");
    if reader.format() == Some(ImageFormat::Jpeg) && !jpeg_end::reaches_end_of_image(bytes) {
        return Err(DecodeError::TruncatedJpeg);
    }
    // Refuse a decompression bomb by the size its header declares, before
    // any decoder allocates for it, and say what it claimed.
    let mut header = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .expect("reading from memory cannot fail");
    // Reading the header allocates nothing for pixels; without lifting the
    // limits some decoders refuse here with a message that names no size.
    header.no_limits();
    if let Ok((width, height)) = header.into_dimensions()
        && u64::from(width) * u64::from(height) > MAX_PIXELS
    {
        return Err(DecodeError::TooLarge { width, height });
    }
    // 16-bit RGBA is 8 bytes a pixel: room for the largest allowed image.
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(classify)?;

    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(DecodeError::TooLarge { width, height });
    }
    // A broken EXIF block should not cost the user their thumbnails: show the
    // image as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let rgb_icc_profile = decoder
        .icc_profile()
        .ok()
        .flatten()
        .filter(|p| is_rgb_profile(p));
    let image = DynamicImage::from_decoder(decoder).map_err(classify)?;
    Ok(Decoded {
        image,
        orientation,
        rgb_icc_profile,
    })
}

/// An ICC profile's header names its data colour space at bytes 16..20.
fn is_rgb_profile(profile: &[u8]) -> bool {
    profile.get(16..20) == Some(b"RGB ")
}

fn classify(error: ImageError) -> DecodeError {
    match error {
        ImageError::Unsupported(_) => DecodeError::Unsupported(error),
        ImageError::Limits(_) => DecodeError::OverLimit,
        _ => DecodeError::Invalid(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text is refused with image's own explanation, which names the cause.
    #[test]
    fn garbage_is_unsupported() {
        let err = decode(b"hello, this is not an image").err().unwrap();
        assert!(matches!(err, DecodeError::Unsupported(_)));
        assert_eq!(
            err.to_string(),
            "not a supported image (the image format could not be determined)"
        );
    }

    /// An empty object is not an image either.
    #[test]
    fn empty_is_unsupported() {
        assert!(matches!(decode(b""), Err(DecodeError::Unsupported(_))));
    }

    /// A huge animated GIF: a 20000x20000 screen and 5,000 frames (each a
    /// tiny 1x1 image, so the file stays small) is refused by its declared
    /// size before any frame is decoded.
    #[test]
    fn huge_animated_gif_is_refused_by_its_screen_size() {
        let mut gif = b"GIF89a".to_vec();
        gif.extend(20000u16.to_le_bytes());
        gif.extend(20000u16.to_le_bytes());
        // Global colour table of 2 entries, background 0, no aspect ratio.
        gif.extend([0x80, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff]);
        // Loop forever (NETSCAPE2.0).
        gif.extend(b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00");
        for _ in 0..5000 {
            // Graphic control (10 ms), then a 1x1 frame: LZW min code 2,
            // clear, pixel 0, end.
            gif.extend([0x21, 0xf9, 0x04, 0x00, 0x01, 0x00, 0x00, 0x00]);
            gif.extend([0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0]);
            gif.extend([0x02, 0x02, 0x44, 0x01, 0x00]);
        }
        gif.push(0x3b);
        let err = decode(&gif).err().expect("refused");
        assert!(
            matches!(
                err,
                DecodeError::TooLarge {
                    width: 20000,
                    height: 20000
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "image is 20000x20000, larger than the 64000000-pixel limit"
        );
    }
}
