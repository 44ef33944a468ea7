//! Benchmark #5's floor: the thumbnail function's own code, compiled
//! natively and run in-process on N threads over the given photos.
//!
//! `native_thumbnails THREADS WIDTH QUALITY OUT_DIR PHOTO...` writes each
//! thumbnail to OUT_DIR and prints the elapsed seconds (reading the files
//! included, as the other sides read theirs).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [threads, width, quality, out, photos @ ..] = &args[..] else {
        eprintln!("usage: native_thumbnails THREADS WIDTH QUALITY OUT_DIR PHOTO...");
        std::process::exit(2);
    };
    let threads: usize = threads.parse().expect("THREADS is a number");
    let width: u32 = width.parse().expect("WIDTH is a number");
    let quality: u8 = quality.parse().expect("QUALITY is a number");
    let out = PathBuf::from(out);
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(photo) = photos.get(i) else { break };
                    let bytes = std::fs::read(photo).expect("photo is readable");
                    let (_, thumbnails) = thumbnail::thumbnails::make(&bytes, &[width], quality)
                        .unwrap_or_else(|e| panic!("{photo}: {e}"));
                    let name = PathBuf::from(photo);
                    let name = name.file_name().expect("a file name");
                    std::fs::write(out.join(name), &thumbnails[0].data).unwrap();
                }
            });
        }
    });
    println!("{:.4}", started.elapsed().as_secs_f64());
}
