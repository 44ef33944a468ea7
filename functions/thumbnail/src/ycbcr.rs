//! Thumbnails resized straight from a JPEG's Y, Cb and Cr planes.
//!
//! A JPEG stores a luma plane and two chroma planes, the chroma usually at
//! half the width and height. Decoding to RGB upsamples the chroma to full
//! size and converts every pixel, only for the resizer to throw most of them
//! away, and the JPEG encoder then converts the thumbnail back to YCbCr.
//! Resizing each plane to the thumbnail's size and giving the encoder YCbCr
//! skips the upsampling and both conversions, and the resizer reads one full
//! plane and two quarter planes instead of three full ones. The conversion is
//! affine and resizing linear, so the order changes the picture by rounding
//! only (`tests::same_picture_as_through_rgb`).

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{PixelType, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::{DynamicImage, ImageBuffer};
use jpeg_decoder::Plane;

/// A decoded JPEG's planes (see [`jpeg_decoder::Decoder::decode_ycbcr_planes`]).
pub struct Planes {
    pub y: Plane,
    pub cb: Plane,
    pub cr: Plane,
}

impl Planes {
    /// Encodes a `width`×`height` thumbnail (in the stored frame), turned
    /// upright by `orientation`, as a baseline JPEG.
    pub fn thumbnail(
        &self,
        width: u32,
        height: u32,
        orientation: Orientation,
        quality: u8,
        icc_profile: Option<&[u8]>,
    ) -> Result<Vec<u8>, jpeg_encoder::EncodingError> {
        let mut resizer = Resizer::new();
        let [y, cb, cr] = [&self.y, &self.cb, &self.cr].map(|plane| {
            let src = ImageRef::new(
                plane.width as u32,
                plane.height as u32,
                &plane.data,
                PixelType::U8,
            )
            .expect("a plane's data matches its size");
            let mut dst = Image::new(width, height, PixelType::U8);
            resizer
                .resize(&src, &mut dst, &ResizeOptions::new())
                .expect("source and destination share a pixel type");
            dst.into_vec()
        });
        let mut interleaved = Vec::with_capacity(y.len() * 3);
        for ((y, cb), cr) in y.into_iter().zip(cb).zip(cr) {
            interleaved.extend_from_slice(&[y, cb, cr]);
        }
        // An RGB buffer only to borrow `apply_orientation`: the three
        // channels stay Y, Cb, Cr, and are written as such.
        let mut image = DynamicImage::ImageRgb8(
            ImageBuffer::from_raw(width, height, interleaved).expect("sized by the resizer"),
        );
        image.apply_orientation(orientation);
        let mut out = Vec::new();
        crate::encode::write_jpeg(
            &mut out,
            image.as_bytes(),
            (image.width(), image.height()),
            jpeg_encoder::ColorType::Ycbcr,
            quality,
            icc_profile,
        )?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean absolute difference per sample, and the largest.
    fn difference(a: &[u8], b: &[u8]) -> (f64, u8) {
        assert_eq!(a.len(), b.len());
        let max = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        let sum: u64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| u64::from(x.abs_diff(*y)))
            .sum();
        (sum as f64 / a.len() as f64, max)
    }

    /// Resizing the planes gives the picture that upsampling, converting to
    /// RGB and resizing gives, within rounding — on a photo-like image with
    /// 4:2:0 chroma, decoded at 1/2 scale as the thumbnail function does.
    #[test]
    fn same_picture_as_through_rgb() {
        let (w, h) = (640u32, 480u32);
        let rgb = image::RgbImage::from_fn(w, h, |x, y| {
            let wave = |f: f32| ((f.sin() + 1.0) * 110.0) as u8;
            image::Rgb([
                wave(x as f32 / 37.0 + y as f32 / 91.0),
                wave(y as f32 / 23.0),
                wave((x + y) as f32 / 53.0) / 2 + 60,
            ])
        });
        let mut jpeg = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut jpeg, 90);
        encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
        encoder
            .encode(
                rgb.as_raw(),
                w as u16,
                h as u16,
                jpeg_encoder::ColorType::Rgb,
            )
            .unwrap();

        let mut decoder = jpeg_decoder::Decoder::new(&jpeg[..]);
        decoder.scale(200, 150).unwrap();
        let [y, cb, cr] = decoder.decode_ycbcr_planes().unwrap().expect("YCbCr");
        assert_eq!((y.width, y.height), (320, 240));
        assert_eq!((cb.width, cb.height), (160, 120));
        let planes = Planes { y, cb, cr };
        let ours = planes
            .thumbnail(200, 150, Orientation::NoTransforms, 95, None)
            .unwrap();

        let mut decoder = jpeg_decoder::Decoder::new(&jpeg[..]);
        decoder.scale(200, 150).unwrap();
        let pixels = decoder.decode().unwrap();
        let through_rgb = DynamicImage::ImageRgb8(ImageBuffer::from_raw(320, 240, pixels).unwrap());
        let through_rgb = crate::resize::resize(&through_rgb, 200, 150);

        let ours = image::load_from_memory(&ours).unwrap().into_rgb8();
        assert_eq!(ours.dimensions(), (200, 150));
        let (mean, max) = difference(ours.as_raw(), through_rgb.as_bytes());
        // The thumbnail went through one more JPEG round (quality 95).
        assert!(mean < 2.0 && max < 40, "mean {mean:.2}, max {max}");
    }

    /// A turned photo's thumbnail comes out upright: the sides swap.
    #[test]
    fn orientation_is_applied() {
        let plane = |w: usize, h: usize, v: u8| Plane {
            width: w,
            height: h,
            data: vec![v; w * h],
        };
        let planes = Planes {
            y: plane(64, 32, 200),
            cb: plane(32, 16, 128),
            cr: plane(32, 16, 128),
        };
        let jpeg = planes
            .thumbnail(32, 16, Orientation::Rotate90, 80, None)
            .unwrap();
        let decoded = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (16, 32));
    }
}
