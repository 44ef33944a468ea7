//! Deciding which thumbnail sizes to make, and scaling pixels down to them.
//!
//! Thumbnails never upscale: a width larger than the image is skipped, and an
//! image narrower than every width gets one "thumbnail" at its own size, so
//! every upload has at least one rendition in the thumbnail sink.
//!
//! Scaling uses a Lanczos3 convolution from `fast_image_resize`, which runs on
//! wasm's SIMD and multiplies colour by alpha before filtering, so transparent
//! pixels' (invisible) colours do not bleed into the edges of visible ones.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{PixelType, ResizeOptions, Resizer};
use image::{DynamicImage, ImageBuffer};

/// The upright `(width, height)` of each thumbnail to make, smallest first,
/// for an image that is `upright` when displayed.
pub fn plan(requested: &[u32], upright: (u32, u32)) -> Vec<(u32, u32)> {
    let (image_width, image_height) = upright;
    let mut widths: Vec<u32> = requested
        .iter()
        .copied()
        .filter(|&w| w <= image_width)
        .collect();
    widths.sort_unstable();
    widths.dedup();
    if widths.is_empty() {
        widths.push(image_width);
    }
    widths
        .into_iter()
        .map(|w| (w, scaled_height(image_width, image_height, w)))
        .collect()
}

/// The height that keeps the aspect ratio at width `w`, rounded to the
/// nearest pixel and never 0 (a 4000x3 banner at 128 wide is still 1 high).
fn scaled_height(image_width: u32, image_height: u32, w: u32) -> u32 {
    let exact = u64::from(image_height) * u64::from(w);
    let rounded = (exact + u64::from(image_width) / 2) / u64::from(image_width);
    u32::try_from(rounded).unwrap_or(u32::MAX).max(1)
}

/// Scales an 8-bit RGB or RGBA image to exactly `width` x `height`.
pub fn resize(image: &DynamicImage, width: u32, height: u32) -> DynamicImage {
    if (image.width(), image.height()) == (width, height) {
        return image.clone();
    }
    let pixel_type = match image {
        DynamicImage::ImageRgb8(_) => PixelType::U8x3,
        DynamicImage::ImageRgba8(_) => PixelType::U8x4,
        other => unreachable!("resize is given 8-bit RGB(A) only, got {:?}", other.color()),
    };
    let src = ImageRef::new(image.width(), image.height(), image.as_bytes(), pixel_type)
        .expect("an image buffer matches its own dimensions");
    let mut dst = Image::new(width, height, pixel_type);
    Resizer::new()
        .resize(&src, &mut dst, &ResizeOptions::new())
        .expect("source and destination share a pixel type");
    let pixels = dst.into_vec();
    match pixel_type {
        PixelType::U8x3 => DynamicImage::ImageRgb8(
            ImageBuffer::from_raw(width, height, pixels).expect("sized by the resizer"),
        ),
        _ => DynamicImage::ImageRgba8(
            ImageBuffer::from_raw(width, height, pixels).expect("sized by the resizer"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, Rgba};

    /// Widths wider than the image are skipped; the rest keep the aspect ratio.
    #[test]
    fn never_upscales() {
        assert_eq!(
            plan(&[128, 512, 1024], (640, 480)),
            vec![(128, 96), (512, 384)]
        );
        assert_eq!(
            plan(&[1024, 128, 128], (2048, 1000)),
            vec![(128, 63), (1024, 500)]
        );
    }

    /// An image narrower than every width gets exactly one thumbnail, at its own size.
    #[test]
    fn small_image_gets_one_thumbnail() {
        assert_eq!(plan(&[128, 512, 1024], (100, 80)), vec![(100, 80)]);
    }

    /// A width equal to the image's counts as fitting.
    #[test]
    fn exact_width_is_kept() {
        assert_eq!(plan(&[128, 512], (512, 512)), vec![(128, 128), (512, 512)]);
    }

    /// Heights round to the nearest pixel and are at least 1.
    #[test]
    fn heights_round_and_stay_positive() {
        assert_eq!(plan(&[128], (300, 200)), vec![(128, 85)]); // 85.33
        assert_eq!(plan(&[128], (300, 201)), vec![(128, 86)]); // 85.76
        assert_eq!(plan(&[128], (4000, 3)), vec![(128, 1)]);
    }

    /// Resizing keeps the pixel layout and a flat colour stays that colour.
    #[test]
    fn resize_keeps_layout_and_colour() {
        let rgb = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(40, 30, Rgb([10u8, 200, 30])));
        let small = resize(&rgb, 8, 6);
        assert_eq!((small.width(), small.height()), (8, 6));
        assert_eq!(
            small.as_rgb8().unwrap().get_pixel(4, 3),
            &Rgb([10, 200, 30])
        );

        let rgba =
            DynamicImage::ImageRgba8(ImageBuffer::from_pixel(40, 30, Rgba([1u8, 2, 3, 128])));
        assert!(resize(&rgba, 8, 6).as_rgba8().is_some());
    }

    /// A transparent pixel's colour does not tint its visible neighbours.
    #[test]
    fn transparent_colour_does_not_bleed() {
        // Left half opaque white, right half fully transparent *black*.
        let image = ImageBuffer::from_fn(64, 8, |x, _| {
            if x < 32 {
                Rgba([255u8, 255, 255, 255])
            } else {
                Rgba([0, 0, 0, 0])
            }
        });
        let small = resize(&DynamicImage::ImageRgba8(image), 16, 2);
        let edge = small.as_rgba8().unwrap().get_pixel(7, 0);
        assert!(edge[3] > 0);
        assert!(
            edge[0] > 245,
            "edge pixel darkened by invisible black: {edge:?}"
        );
    }
}
