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
use image::{DynamicImage, GrayImage};
use jpeg_decoder::Plane;

use crate::encode;

/// A decoded JPEG's planes (see [`jpeg_decoder::Decoder::decode_ycbcr_planes`]).
pub struct Planes {
    pub y: Plane,
    pub cb: Plane,
    pub cr: Plane,
}

impl Planes {
    /// Encodes a `width`×`height` thumbnail (in the stored frame), turned
    /// upright by `orientation`, as a baseline JPEG. The resized planes go
    /// to the encoder as they are: no interleaving into pixels for the
    /// encoder to take apart again.
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
            let mut plane = DynamicImage::ImageLuma8(
                GrayImage::from_raw(width, height, dst.into_vec()).expect("sized by the resizer"),
            );
            plane.apply_orientation(orientation);
            plane.into_luma8()
        });
        let mut out = Vec::new();
        encode::baseline_encoder(&mut out, quality, icc_profile)?.encode_image(Thumbnail {
            y,
            cb,
            cr,
        })?;
        Ok(out)
    }
}

/// A thumbnail's upright planes, all of its size, as the JPEG encoder reads
/// them (it subsamples the chroma itself).
struct Thumbnail {
    y: GrayImage,
    cb: GrayImage,
    cr: GrayImage,
}

impl jpeg_encoder::ImageBuffer for Thumbnail {
    fn get_jpeg_color_type(&self) -> jpeg_encoder::JpegColorType {
        jpeg_encoder::JpegColorType::Ycbcr
    }

    fn width(&self) -> u16 {
        // Thumbnails are far below JPEG's 65535-pixel limit; the encoder
        // rejects a zero side rather than wrapping.
        u16::try_from(self.y.width()).unwrap_or(0)
    }

    fn height(&self) -> u16 {
        u16::try_from(self.y.height()).unwrap_or(0)
    }

    fn fill_buffers(&self, y: u16, buffers: &mut [Vec<u8>; 4]) {
        for (buffer, plane) in buffers.iter_mut().zip([&self.y, &self.cb, &self.cr]) {
            let width = plane.width() as usize;
            buffer.extend_from_slice(&plane.as_raw()[usize::from(y) * width..][..width]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageBuffer;

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

    /// The encoder reading the planes writes the very bytes it writes from
    /// the same samples interleaved, at an odd size with partial blocks.
    #[test]
    fn planes_encode_as_interleaved_samples() {
        let (w, h) = (37u32, 23u32);
        let plane = |f: fn(u32, u32) -> u8| GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]));
        let thumbnail = Thumbnail {
            y: plane(|x, y| (x * 7 + y * 3) as u8),
            cb: plane(|x, _| 90 + x as u8),
            cr: plane(|_, y| 160 - y as u8),
        };
        let interleaved: Vec<u8> = (0..(w * h) as usize)
            .flat_map(|i| [&thumbnail.y, &thumbnail.cb, &thumbnail.cr].map(|p| p.as_raw()[i]))
            .collect();
        let mut expected = Vec::new();
        encode::baseline_encoder(&mut expected, 80, None)
            .unwrap()
            .encode(
                &interleaved,
                w as u16,
                h as u16,
                jpeg_encoder::ColorType::Ycbcr,
            )
            .unwrap();
        let mut planar = Vec::new();
        encode::baseline_encoder(&mut planar, 80, None)
            .unwrap()
            .encode_image(thumbnail)
            .unwrap();
        assert_eq!(planar, expected);
    }

    /// Chroma is stored at half size below quality 90 and at full size from
    /// 90 up, as libvips does.
    #[test]
    fn chroma_is_subsampled_below_quality_90() {
        let plane = |w: usize, h: usize| Plane {
            width: w,
            height: h,
            data: (0..w * h).map(|i| (i % 251) as u8).collect(),
        };
        let planes = Planes {
            y: plane(64, 48),
            cb: plane(32, 24),
            cr: plane(32, 24),
        };
        for (quality, chroma) in [(89, (17, 12)), (90, (33, 23))] {
            let jpeg = planes
                .thumbnail(33, 23, Orientation::NoTransforms, quality, None)
                .unwrap();
            let mut decoder = jpeg_decoder::Decoder::new(&jpeg[..]);
            let [y, cb, cr] = decoder.decode_ycbcr_planes().unwrap().expect("YCbCr");
            assert_eq!((y.width, y.height), (33, 23));
            for plane in [cb, cr] {
                assert_eq!((plane.width, plane.height), chroma, "quality {quality}");
            }
        }
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
