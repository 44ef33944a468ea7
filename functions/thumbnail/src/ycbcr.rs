//! Thumbnails resized straight from a JPEG's Y, Cb and Cr planes.
//!
//! A JPEG stores a luma plane and two chroma planes, the chroma usually at
//! half the width and height. Decoding to RGB upsamples the chroma to full
//! size and converts every pixel, only for the resizer to throw most of them
//! away, and the JPEG encoder then converts the thumbnail back to YCbCr.
//! Resizing each plane to the size the thumbnail stores it at (the chroma to
//! half the width and height when it is subsampled) and giving the encoder
//! the planes skips the upsampling and both conversions, and the resizer
//! reads one full plane and two quarter planes instead of three full ones,
//! and writes a full and two quarter ones. The conversion is
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
    /// upright by `orientation`, as a baseline JPEG.
    ///
    /// The resized planes go to the encoder as they are, not interleaved into
    /// pixels for the encoder to take apart again. When the thumbnail's
    /// chroma is subsampled ([`encode::subsamples_chroma`]), the chroma
    /// planes are resized straight to half the width and height, which is
    /// what gets stored: resized to full size, three of every four samples
    /// would be thrown away by the encoder, and the one kept would sit off
    /// the centre of the luma it goes with (0.8 pixel vertically, measured:
    /// `tests::chroma_stays_registered_with_luma`).
    pub fn thumbnail(
        &self,
        width: u32,
        height: u32,
        orientation: Orientation,
        quality: u8,
        icc_profile: Option<&[u8]>,
    ) -> Result<Vec<u8>, jpeg_encoder::EncodingError> {
        let halved = encode::subsamples_chroma(quality);
        let chroma = if halved {
            (width.div_ceil(2), height.div_ceil(2))
        } else {
            (width, height)
        };
        let mut resizer = Resizer::new();
        let [y, cb, cr] = [
            (&self.y, (width, height)),
            (&self.cb, chroma),
            (&self.cr, chroma),
        ]
        .map(|(plane, (width, height))| {
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
            halved,
        })?;
        Ok(out)
    }
}

/// A thumbnail's upright planes, as the JPEG encoder reads them.
struct Thumbnail {
    y: GrayImage,
    cb: GrayImage,
    cr: GrayImage,
    /// Whether the chroma planes are at half the width and height.
    halved: bool,
}

impl jpeg_encoder::ImageBuffer for Thumbnail {
    fn get_jpeg_color_type(&self) -> jpeg_encoder::JpegColorType {
        jpeg_encoder::JpegColorType::Ycbcr
    }

    fn width(&self) -> u16 {
        encode::jpeg_side(self.y.width())
    }

    fn height(&self) -> u16 {
        encode::jpeg_side(self.y.height())
    }

    /// Row `y` of each component at full width. The encoder subsamples
    /// chroma by keeping the first sample of each 2×2, so a halved plane's
    /// samples are each given twice, on every other row.
    fn fill_buffers(&self, y: u16, buffers: &mut [Vec<u8>; 4]) {
        let y = usize::from(y);
        buffers[0].extend_from_slice(row(&self.y, y));
        for (buffer, plane) in buffers[1..3].iter_mut().zip([&self.cb, &self.cr]) {
            if self.halved {
                // Element by element: `fill` or `resize` here is a
                // `memory.fill` call per pair or row in Wasm.
                let end = buffer.len() + self.y.width() as usize;
                buffer.extend(row(plane, y / 2).iter().flat_map(|&s| [s, s]));
                buffer.truncate(end);
            } else {
                buffer.extend_from_slice(row(plane, y));
            }
        }
    }
}

/// Row `y` of `plane`.
fn row(plane: &GrayImage, y: usize) -> &[u8] {
    let width = plane.width() as usize;
    &plane.as_raw()[y * width..][..width]
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
    /// the same samples interleaved (a halved chroma plane's samples
    /// repeated over each 2×2), at an odd size with partial blocks.
    #[test]
    fn planes_encode_as_interleaved_samples() {
        let (w, h) = (37u32, 23u32);
        let luma = GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 7 + y * 3) as u8]));
        for (quality, halved) in [(80, true), (95, false)] {
            let (cw, ch) = if halved {
                (w.div_ceil(2), h.div_ceil(2))
            } else {
                (w, h)
            };
            let thumbnail = Thumbnail {
                y: luma.clone(),
                cb: GrayImage::from_fn(cw, ch, |x, _| image::Luma([90 + 2 * x as u8])),
                cr: GrayImage::from_fn(cw, ch, |_, y| image::Luma([160 - 3 * y as u8])),
                halved,
            };
            let shift = u32::from(halved);
            let interleaved: Vec<u8> = (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .flat_map(|(x, y)| {
                    let chroma = |p: &GrayImage| p.get_pixel(x >> shift, y >> shift)[0];
                    [
                        thumbnail.y.get_pixel(x, y)[0],
                        chroma(&thumbnail.cb),
                        chroma(&thumbnail.cr),
                    ]
                })
                .collect();
            let mut expected = Vec::new();
            encode::baseline_encoder(&mut expected, quality, None)
                .unwrap()
                .encode(
                    &interleaved,
                    w as u16,
                    h as u16,
                    jpeg_encoder::ColorType::Ycbcr,
                )
                .unwrap();
            let mut planar = Vec::new();
            encode::baseline_encoder(&mut planar, quality, None)
                .unwrap()
                .encode_image(thumbnail)
                .unwrap();
            assert_eq!(planar, expected, "quality {quality}");
        }
    }

    /// Where the picture has an edge in luma and chroma at one place, the
    /// thumbnail's chroma edge is where its luma edge is (within a fifth of
    /// a pixel): halved chroma is resized for the centre of the 2×2 of luma
    /// it is stored for. Resized to full size and subsampled by the encoder,
    /// it was 0.8 pixel off vertically.
    #[test]
    fn chroma_stays_registered_with_luma() {
        // A 4:2:0 photo decoded at 1/2 scale: 1363×1113 luma, 682×557 chroma;
        // Y and Cb step at x = 500, Y and Cr at y = 400 (luma pixels).
        let (w, h) = (1363usize, 1113usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let plane = |w: usize, h: usize, f: &dyn Fn(usize, usize) -> u8| Plane {
            width: w,
            height: h,
            data: (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .map(|(x, y)| f(x, y))
                .collect(),
        };
        let planes = Planes {
            y: plane(w, h, &|x, y| {
                (if x < 500 { 30 } else { 90 }) + (if y < 400 { 30 } else { 90 })
            }),
            cb: plane(cw, ch, &|x, _| if x < 250 { 70 } else { 180 }),
            cr: plane(cw, ch, &|_, y| if y < 200 { 80 } else { 170 }),
        };
        let (tw, th) = (720usize, 588usize);
        let jpeg = planes
            .thumbnail(tw as u32, th as u32, Orientation::NoTransforms, 80, None)
            .unwrap();
        let mut decoder = jpeg_decoder::Decoder::new(&jpeg[..]);
        let [y, cb, cr] = decoder.decode_ycbcr_planes().unwrap().expect("YCbCr");
        assert_eq!((cb.width, cb.height), (tw / 2, th / 2));

        /// Where a step profile crosses halfway, in pixel-edge coordinates.
        fn edge(profile: &[f64]) -> f64 {
            let (low, high) = (profile[0], profile[profile.len() - 1]);
            let half = (low + high) / 2.0;
            let rising = high > low;
            let i = profile
                .iter()
                .position(|&v| (v > half) == rising)
                .expect("the profile crosses halfway");
            i as f64 - 0.5 + (half - profile[i - 1]) / (profile[i] - profile[i - 1])
        }
        let row = |p: &Plane, r: usize| -> Vec<f64> {
            p.data[r * p.width..][..p.width]
                .iter()
                .map(|&v| f64::from(v))
                .collect()
        };
        let column = |p: &Plane, c: usize| -> Vec<f64> {
            (0..p.height)
                .map(|r| f64::from(p.data[r * p.width + c]))
                .collect()
        };
        // Luma's edges in thumbnail pixels; chroma's, doubled, likewise.
        let (luma_x, luma_y) = (edge(&row(&y, 20)), edge(&column(&y, 20)));
        let (chroma_x, chroma_y) = (2.0 * edge(&row(&cb, 10)), 2.0 * edge(&column(&cr, 10)));
        assert!(
            (chroma_x - luma_x).abs() < 0.2 && (chroma_y - luma_y).abs() < 0.2,
            "luma edges at ({luma_x:.2}, {luma_y:.2}), chroma at ({chroma_x:.2}, {chroma_y:.2})"
        );
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
