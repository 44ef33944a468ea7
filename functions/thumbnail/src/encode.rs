//! Choosing a thumbnail's file format and writing it.
//!
//! JPEG is the small, universally shown choice for photos, but it cannot hold
//! transparency: an image that actually uses its alpha channel stays PNG. An
//! alpha channel that is opaque everywhere (common in exported PNGs) does not
//! count, so such images still get the smaller JPEG.

use image::codecs::png::PngEncoder;
use image::error::{EncodingError, ImageFormatHint};
use image::{DynamicImage, ImageEncoder, ImageError, ImageFormat};

/// The file format of a thumbnail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Jpeg,
    Png,
}

impl OutputFormat {
    /// JPEG, unless some pixel is not fully opaque.
    pub fn for_image(image: &DynamicImage) -> OutputFormat {
        if has_transparency(image) {
            OutputFormat::Png
        } else {
            OutputFormat::Jpeg
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Png => "png",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
        }
    }

    /// The pixel layout this format is written from: 8-bit RGB for JPEG (so
    /// 16-bit, gray and CMYK sources all end up alike), 8-bit RGBA for PNG.
    /// Free when the image is already in that layout.
    pub fn prepare(self, image: DynamicImage) -> DynamicImage {
        match self {
            OutputFormat::Jpeg => DynamicImage::ImageRgb8(image.into_rgb8()),
            OutputFormat::Png => DynamicImage::ImageRgba8(image.into_rgba8()),
        }
    }

    /// Encodes `image`, which must be in the layout [`OutputFormat::prepare`] made.
    pub fn encode(
        self,
        image: &DynamicImage,
        quality: u8,
        icc_profile: Option<&[u8]>,
    ) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        match self {
            OutputFormat::Jpeg => write_jpeg(
                &mut out,
                image.as_bytes(),
                (image.width(), image.height()),
                quality,
                icc_profile,
            )
            .map_err(jpeg_error)?,
            OutputFormat::Png => write(PngEncoder::new(&mut out), image, icc_profile)?,
        }
        Ok(out)
    }
}

/// A JPEG encoder's failure in `image`'s terms.
pub fn jpeg_error(e: jpeg_encoder::EncodingError) -> ImageError {
    ImageError::Encoding(EncodingError::new(
        ImageFormatHint::Exact(ImageFormat::Jpeg),
        e,
    ))
}

/// Whether a JPEG thumbnail at `quality` has its chroma at half the width
/// and height (4:2:0), as libvips decides by default: below quality 90 the
/// eye does not miss it, and the file is smaller.
pub fn subsamples_chroma(quality: u8) -> bool {
    quality < 90
}

/// A baseline JPEG encoder writing to `out`, chroma subsampled as
/// [`subsamples_chroma`] says, with `icc_profile` embedded.
pub fn baseline_encoder<'a>(
    out: &'a mut Vec<u8>,
    quality: u8,
    icc_profile: Option<&[u8]>,
) -> Result<jpeg_encoder::Encoder<&'a mut Vec<u8>>, jpeg_encoder::EncodingError> {
    let mut encoder = jpeg_encoder::Encoder::new(out, quality);
    encoder.set_sampling_factor(if subsamples_chroma(quality) {
        jpeg_encoder::SamplingFactor::F_2_2
    } else {
        jpeg_encoder::SamplingFactor::F_1_1
    });
    if let Some(profile) = icc_profile {
        encoder.add_icc_profile(profile)?;
    }
    Ok(encoder)
}

/// A thumbnail's side as JPEG's 16-bit field: thumbnails are far below its
/// 65535-pixel limit, and an oversized side becomes 0, which the encoder
/// rejects rather than wrapping.
pub fn jpeg_side(n: u32) -> u16 {
    u16::try_from(n).unwrap_or(0)
}

/// Writes 8-bit RGB `pixels` as a baseline JPEG (see [`baseline_encoder`]).
fn write_jpeg(
    out: &mut Vec<u8>,
    pixels: &[u8],
    (width, height): (u32, u32),
    quality: u8,
    icc_profile: Option<&[u8]>,
) -> Result<(), jpeg_encoder::EncodingError> {
    baseline_encoder(out, quality, icc_profile)?.encode(
        pixels,
        jpeg_side(width),
        jpeg_side(height),
        jpeg_encoder::ColorType::Rgb,
    )
}

/// Writes `image` with `encoder`, carrying its colour profile along.
fn write(
    mut encoder: impl ImageEncoder,
    image: &DynamicImage,
    icc_profile: Option<&[u8]>,
) -> Result<(), ImageError> {
    if let Some(profile) = icc_profile {
        // Only fails for formats without ICC support; JPEG and PNG have it.
        let _ = encoder.set_icc_profile(profile.to_vec());
    }
    encoder.write_image(
        image.as_bytes(),
        image.width(),
        image.height(),
        image.color().into(),
    )
}

/// True when at least one pixel is not fully opaque, judged at the image's own
/// bit depth.
pub fn has_transparency(image: &DynamicImage) -> bool {
    fn any_below<T: PartialOrd + Copy>(samples: &[T], channels: usize, opaque: T) -> bool {
        samples
            .chunks_exact(channels)
            .any(|pixel| pixel[channels - 1] < opaque)
    }
    match image {
        DynamicImage::ImageLumaA8(i) => any_below(i.as_raw(), 2, u8::MAX),
        DynamicImage::ImageRgba8(i) => any_below(i.as_raw(), 4, u8::MAX),
        DynamicImage::ImageLumaA16(i) => any_below(i.as_raw(), 2, u16::MAX),
        DynamicImage::ImageRgba16(i) => any_below(i.as_raw(), 4, u16::MAX),
        DynamicImage::ImageRgba32F(i) => any_below(i.as_raw(), 4, 1.0),
        other if other.color().has_alpha() => any_below(other.to_rgba8().as_raw(), 4, u8::MAX),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, LumaA, Rgb, Rgba};

    /// One translucent pixel is enough to keep PNG; an all-opaque alpha channel is not.
    #[test]
    fn format_follows_real_transparency() {
        let mut rgba = ImageBuffer::from_pixel(4, 4, Rgba([10u8, 20, 30, 255]));
        assert_eq!(
            OutputFormat::for_image(&rgba.clone().into()),
            OutputFormat::Jpeg
        );
        rgba.put_pixel(3, 3, Rgba([10, 20, 30, 254]));
        assert_eq!(OutputFormat::for_image(&rgba.into()), OutputFormat::Png);

        let opaque16 = ImageBuffer::from_pixel(2, 2, LumaA([7u16, u16::MAX]));
        assert_eq!(
            OutputFormat::for_image(&opaque16.into()),
            OutputFormat::Jpeg
        );
        // 65534/65535 rounds to 255 in 8 bits, yet it is not opaque.
        let almost16 = ImageBuffer::from_pixel(2, 2, LumaA([7u16, u16::MAX - 1]));
        assert_eq!(OutputFormat::for_image(&almost16.into()), OutputFormat::Png);

        let rgb = ImageBuffer::from_pixel(2, 2, Rgb([1u8, 2, 3]));
        assert_eq!(OutputFormat::for_image(&rgb.into()), OutputFormat::Jpeg);
    }

    /// What is written is what the extension and content type claim.
    #[test]
    fn encodes_the_announced_format() {
        let image = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(8, 8, Rgb([200u8, 40, 40])));
        let jpeg = OutputFormat::Jpeg
            .encode(&OutputFormat::Jpeg.prepare(image.clone()), 80, None)
            .unwrap();
        assert_eq!(
            image::guess_format(&jpeg).unwrap(),
            image::ImageFormat::Jpeg
        );
        let png = OutputFormat::Png
            .encode(&OutputFormat::Png.prepare(image), 80, None)
            .unwrap();
        assert_eq!(image::guess_format(&png).unwrap(), image::ImageFormat::Png);
    }
}
