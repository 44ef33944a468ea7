//! Where a thumbnail is stored: next to its source, named for its width.
//!
//! `photos/photo.jpg` at 128 px becomes `photos/photo-128.jpg`. Only the last
//! path segment loses its extension, so a dot in a folder name
//! (`v1.2/readme`) is left alone, and a leading dot (`.hidden`) is a name,
//! not an extension.

/// The key for the `width`-wide thumbnail of `source_key`, with extension `ext`.
pub fn thumbnail_key(source_key: &str, width: u32, ext: &str) -> String {
    let segment_start = source_key.rfind('/').map_or(0, |slash| slash + 1);
    let stem_end = match source_key[segment_start..].rfind('.') {
        Some(dot) if dot > 0 => segment_start + dot,
        _ => source_key.len(),
    };
    format!("{}-{width}.{ext}", &source_key[..stem_end])
}

#[cfg(test)]
mod tests {
    use super::thumbnail_key;

    /// The extension is replaced by `-<width>.<ext>`.
    #[test]
    fn replaces_the_extension() {
        assert_eq!(
            thumbnail_key("photos/photo.jpg", 128, "jpg"),
            "photos/photo-128.jpg"
        );
        assert_eq!(thumbnail_key("logo.PNG", 512, "png"), "logo-512.png");
        assert_eq!(thumbnail_key("a/b.tar.gz", 64, "jpg"), "a/b.tar-64.jpg");
    }

    /// A key without an extension just gets the suffix.
    #[test]
    fn no_extension() {
        assert_eq!(thumbnail_key("a/b", 128, "jpg"), "a/b-128.jpg");
        assert_eq!(thumbnail_key("photo", 128, "jpg"), "photo-128.jpg");
    }

    /// Dots in folders and leading dots are not extensions.
    #[test]
    fn only_the_last_segment_has_an_extension() {
        assert_eq!(
            thumbnail_key("v1.2/readme", 128, "jpg"),
            "v1.2/readme-128.jpg"
        );
        assert_eq!(
            thumbnail_key("dir/.hidden", 128, "png"),
            "dir/.hidden-128.png"
        );
        assert_eq!(thumbnail_key("dir.d/x.webp", 128, "jpg"), "dir.d/x-128.jpg");
    }
}
