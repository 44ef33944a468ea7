//! Turning an uploaded object's bytes into pixels.
//!
//! The format is sniffed from the bytes, never taken from the key or the
//! content type: uploads are often misnamed. The EXIF orientation is read but
//! not applied here, because rotating the full-size image would copy it;
//! [`crate::thumbnails`] applies it to each small thumbnail instead.
//!
//! JPEGs much larger than the thumbnails wanted are decoded *shrunk*: the
//! DCT blocks are inverted at 4×4, 2×2 or 1×1 instead of 8×8, which yields
//! the image at 1/2, 1/4 or 1/8 of its size for a fraction of the work and
//! memory (libjpeg's and libvips' "shrink-on-load"). The resizer then takes
//! it to the exact size.

use std::fmt;
use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

use crate::jpeg_end;
use crate::ycbcr;

/// Largest image decoded, in pixels (a 50-megapixel camera still fits).
/// Past it, a clear "too large" beats an out-of-memory trap for whoever reads
/// the dead letter. Below it, memory is the pipeline's `memory_limit`: a
/// 12-megapixel JPEG peaks at about 52 MB, roughly 4.5 bytes a pixel.
pub const MAX_PIXELS: u64 = 64_000_000;

/// A decoded image as stored, plus how to turn it upright.
pub struct Decoded {
    /// The pixels: the whole image, or a shrunk decode of it.
    pub pixels: Pixels,
    /// The image's own width and height as stored (before any shrinking).
    pub full: (u32, u32),
    pub orientation: Orientation,
    /// The embedded ICC profile when it describes RGB, so thumbnails of wide-gamut
    /// (e.g. Display P3) photos keep their colours. A CMYK or gray profile is
    /// dropped: the thumbnails are RGB and such a profile would misdescribe them.
    pub rgb_icc_profile: Option<Vec<u8>>,
}

/// Decoded pixels: an image, or a JPEG's planes for [`ycbcr`] to resize.
pub enum Pixels {
    Image(DynamicImage),
    YCbCr(ycbcr::Planes),
}

impl Pixels {
    #[cfg(test)]
    pub fn dimensions(&self) -> (u32, u32) {
        match self {
            Pixels::Image(image) => (image.width(), image.height()),
            Pixels::YCbCr(planes) => (planes.y.width as u32, planes.y.height as u32),
        }
    }
}

impl Decoded {
    /// Width and height once the orientation is applied.
    pub fn upright_dimensions(&self) -> (u32, u32) {
        let (w, h) = self.full;
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
///
/// `needed` is told the image's upright size and answers the largest upright
/// size the caller will scale it to (`None`: the full size); a JPEG may then
/// be decoded shrunk to no less than that.
pub fn decode(
    bytes: &[u8],
    needed: impl Fn((u32, u32)) -> Option<(u32, u32)>,
) -> Result<Decoded, DecodeError> {
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
    if reader.format() == Some(ImageFormat::Jpeg)
        && let Some(decoded) = shrink_on_load(bytes, &needed)
    {
        return Ok(decoded);
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
        pixels: Pixels::Image(image),
        full: (width, height),
        orientation,
        rgb_icc_profile,
    })
}

/// Decodes a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) that still
/// covers what is `needed`. `None` when no shrinking applies, or for what
/// the general path handles better: CMYK and 12-bit JPEGs, and any error
/// (which the general path then reports in its own words).
fn shrink_on_load(
    bytes: &[u8],
    needed: &impl Fn((u32, u32)) -> Option<(u32, u32)>,
) -> Option<Decoded> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    let full = (u32::from(info.width), u32::from(info.height));
    if !matches!(
        info.pixel_format,
        jpeg_decoder::PixelFormat::RGB24 | jpeg_decoder::PixelFormat::L8
    ) {
        return None;
    }
    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let turned = swaps_axes(orientation);
    let upright = if turned { (full.1, full.0) } else { full };
    let (w, h) = needed(upright)?;
    let (w, h) = if turned { (h, w) } else { (w, h) };
    if w * 2 > full.0 || h * 2 > full.1 {
        return None;
    }
    // Both fit in u16: they are at most half of a JPEG's u16 dimensions.
    let (scaled_w, scaled_h) = decoder.scale(w as u16, h as u16).ok()?;
    // YCbCr (nearly every photo) stays planes: see `ycbcr` for why.
    let pixels = match decoder.decode_ycbcr_planes().ok()? {
        Some([y, cb, cr]) => Pixels::YCbCr(ycbcr::Planes { y, cb, cr }),
        None => {
            let pixels = decoder.decode().ok()?;
            let (scaled_w, scaled_h) = (u32::from(scaled_w), u32::from(scaled_h));
            Pixels::Image(match info.pixel_format {
                jpeg_decoder::PixelFormat::RGB24 => {
                    DynamicImage::ImageRgb8(image::RgbImage::from_raw(scaled_w, scaled_h, pixels)?)
                }
                _ => DynamicImage::ImageLuma8(image::GrayImage::from_raw(
                    scaled_w, scaled_h, pixels,
                )?),
            })
        }
    };
    let rgb_icc_profile = decoder.icc_profile().filter(|p| is_rgb_profile(p));
    Some(Decoded {
        pixels,
        full,
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
        let err = decode(b"hello, this is not an image", |_| None)
            .err()
            .unwrap();
        assert!(matches!(err, DecodeError::Unsupported(_)));
        assert_eq!(
            err.to_string(),
            "not a supported image (the image format could not be determined)"
        );
    }

    /// An empty object is not an image either.
    #[test]
    fn empty_is_unsupported() {
        assert!(matches!(
            decode(b"", |_| None),
            Err(DecodeError::Unsupported(_))
        ));
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
        let err = decode(&gif, |_| None).err().expect("refused");
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

    fn photo(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
        });
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(image)
            .write_to(&mut out, ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    }

    /// A noisy picture: long Huffman codes, many 0xFF bytes to stuff.
    fn noisy(width: u16, height: u16) -> Vec<u8> {
        let mut state = 0x2545_f491_u32;
        let mut pixels = Vec::with_capacity(usize::from(width) * usize::from(height) * 3);
        for y in 0..height {
            for x in 0..width {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let noise = (state % 64) as u16;
                pixels.push(((x + noise) % 256) as u8);
                pixels.push(((y * 2 + noise) % 256) as u8);
                pixels.push(((x + y + noise * 3) % 256) as u8);
            }
        }
        pixels
    }

    /// The patched entropy decoder (vendor/jpeg-decoder) reads baseline,
    /// progressive and restart-marker streams as zune-jpeg (image's own
    /// decoder) does: a misread bit would garble every block after it.
    #[test]
    fn patched_jpeg_decoder_agrees_with_zune_jpeg() {
        let (width, height) = (301, 203);
        let pixels = noisy(width, height);
        for (progressive, restart) in [(false, 0), (true, 0), (false, 3), (true, 5)] {
            let mut bytes = Vec::new();
            let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, 92);
            encoder.set_progressive(progressive);
            encoder.set_restart_interval(restart);
            encoder
                .encode(&pixels, width, height, jpeg_encoder::ColorType::Rgb)
                .unwrap();
            let ours = jpeg_decoder::Decoder::new(&bytes[..]).decode().unwrap();
            let zune = image::load_from_memory(&bytes)
                .unwrap()
                .into_rgb8()
                .into_raw();
            assert_eq!(ours.len(), zune.len());
            let diffs: Vec<u32> = ours
                .iter()
                .zip(&zune)
                .map(|(a, b)| u32::from(a.abs_diff(*b)))
                .collect();
            let mean = diffs.iter().sum::<u32>() as f64 / diffs.len() as f64;
            let max = diffs.iter().copied().max().unwrap();
            // IDCTs and chroma upsampling differ by rounding, not more.
            assert!(
                mean < 1.5 && max <= 40,
                "progressive {progressive}, restart {restart}: mean {mean:.2}, max {max}"
            );
        }
    }

    #[test]
    fn a_large_jpeg_is_decoded_shrunk_to_cover_what_is_needed() {
        let bytes = photo(1600, 1200);
        // 300x225 needed: 1/4 (400x300) covers it, 1/8 (200x150) would not.
        let decoded = decode(&bytes, |upright| {
            assert_eq!(upright, (1600, 1200));
            Some((300, 225))
        })
        .unwrap();
        assert_eq!(decoded.full, (1600, 1200));
        assert_eq!(decoded.upright_dimensions(), (1600, 1200));
        assert_eq!(decoded.pixels.dimensions(), (400, 300));
        // Needing more than half the size: no shrinking.
        let decoded = decode(&bytes, |_| Some((900, 675))).unwrap();
        assert_eq!(decoded.pixels.dimensions(), (1600, 1200));
        let decoded = decode(&bytes, |_| None).unwrap();
        assert_eq!(decoded.pixels.dimensions(), (1600, 1200));
    }
}
