//! Tells a complete JPEG from one cut short.
//!
//! The JPEG decoder is deliberately lenient (like browsers, it renders what
//! it can and paints the rest gray), so a half-uploaded photo would decode
//! "successfully" into a thumbnail with a gray bottom. A complete JPEG ends
//! its scans with an end-of-image marker; walking the marker structure to
//! find it is cheap, and unlike checking the last two bytes it accepts data
//! appended after the image (motion photos, camera trailers) and is not
//! fooled by the end marker of an EXIF preview inside an APP segment.

/// True when the marker structure of `jpeg` (which starts with SOI) reaches EOI.
pub fn reaches_end_of_image(jpeg: &[u8]) -> bool {
    let mut i = 2; // past SOI
    while i < jpeg.len() {
        if jpeg[i] != 0xFF {
            // Junk between segments: tolerated, as the decoder tolerates it.
            i += 1;
            continue;
        }
        let Some(&marker) = jpeg.get(i + 1) else {
            return false;
        };
        match marker {
            0xD9 => return true,
            // Fill byte before a marker.
            0xFF => i += 1,
            // Markers without a length: TEM, RSTn (and a stray stuffed 00).
            0x00 | 0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                let Some(length) = jpeg.get(i + 2..i + 4) else {
                    return false;
                };
                i += 2 + usize::from(u16::from_be_bytes([length[0], length[1]]));
                if marker == 0xDA {
                    i = skip_entropy_coded(jpeg, i);
                }
            }
        }
    }
    false
}

/// The index of the first marker after a scan's entropy-coded data, which
/// contains 0xFF only as a stuffed `FF 00`, a restart marker or fill.
///
/// The scan is most of the file, so its 0xFF bytes are found with `memchr`
/// (SIMD, `simd128` in Wasm) rather than a byte at a time.
fn skip_entropy_coded(jpeg: &[u8], mut i: usize) -> usize {
    while let Some(found) = jpeg.get(i..).and_then(|rest| memchr::memchr(0xFF, rest)) {
        i += found;
        match jpeg.get(i + 1) {
            Some(0x00 | 0xD0..=0xD7 | 0xFF) => i += 1,
            Some(_) => return i,
            None => break,
        }
    }
    jpeg.len()
}

#[cfg(test)]
mod tests {
    use super::reaches_end_of_image;

    fn jpeg() -> Vec<u8> {
        let image =
            image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 77]));
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    /// A whole JPEG, also with bytes appended after it, is complete.
    #[test]
    fn complete() {
        let mut whole = jpeg();
        assert!(reaches_end_of_image(&whole));
        whole.extend_from_slice(b"....ftypmp42 trailing video");
        assert!(reaches_end_of_image(&whole));
    }

    /// Every cut before the end marker is detected.
    #[test]
    fn truncated_anywhere() {
        let whole = jpeg();
        for cut in 2..whole.len() - 1 {
            assert!(
                !reaches_end_of_image(&whole[..cut]),
                "cut at {cut} of {}",
                whole.len()
            );
        }
    }

    /// An EXIF preview's end marker inside APP1 does not count as the image's end.
    #[test]
    fn end_marker_inside_a_segment_is_skipped() {
        let whole = jpeg();
        let preview = [0xFF, 0xD8, 0xFF, 0xD9];
        let mut app1 = vec![0xFF, 0xE1, 0x00, (2 + preview.len()) as u8];
        app1.extend_from_slice(&preview);
        let mut with_preview = whole[..2].to_vec();
        with_preview.extend_from_slice(&app1);
        with_preview.extend_from_slice(&whole[2..whole.len() / 2]);
        assert!(!reaches_end_of_image(&with_preview));
    }
}
