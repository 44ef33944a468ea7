#!/usr/bin/env python3
"""The photos for benchmark #5: 200 JPEGs of 2725×2225 (the size of the
sharp benchmark's input), made deterministically from real photographs.

Source: the nature photographs of Debian's `mate-backgrounds` package
(downloaded with `apt-get download`, unpacked with `dpkg -x`, not
installed). Each output is a different crop of one of them, scaled up by a
varying factor (they are 1280–2560 px wide) with Lanczos, mirrored for
every other one, plus Gaussian noise of σ 2 (what a camera sensor adds at
low ISO, and the fine detail that upscaling removes), saved at quality 90
with 4:2:0 chroma, as cameras do. Needs `vips` (libvips-tools).

Usage: photos.py DIR  — writes DIR/photo-000.jpg … photo-199.jpg, once.
"""
import glob
import os
import subprocess
import sys
import tempfile

COUNT = 200
WIDTH, HEIGHT = 2725, 2225
PACKAGE = "mate-backgrounds"


def run(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def header(path, field):
    return int(subprocess.run(["vipsheader", "-f", field, path], check=True,
                              capture_output=True, text=True).stdout)


def sources(cache):
    unpacked = os.path.join(cache, "unpacked")
    if not os.path.isdir(unpacked):
        os.makedirs(cache, exist_ok=True)
        run("apt-get", "download", PACKAGE)  # into the working directory
        deb = sorted(glob.glob(f"{PACKAGE}_*.deb"))[-1]
        run("dpkg", "-x", deb, unpacked)
        os.remove(deb)
    return sorted(glob.glob(os.path.join(unpacked, "usr/share/backgrounds/mate/nature/*.jpg")))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    wanted = [os.path.join(out, f"photo-{i:03}.jpg") for i in range(COUNT)]
    if all(os.path.exists(p) for p in wanted):
        return
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        photos = sources(os.path.join(out, ".source"))
        os.chdir(cwd)
        if not photos:
            sys.exit(f"no photographs found in {PACKAGE}")
        for i, path in enumerate(wanted):
            if os.path.exists(path):
                continue
            source = photos[i % len(photos)]
            w, h = header(source, "width"), header(source, "height")
            # Cover WIDTH×HEIGHT, then 0-40 % more, so crops differ.
            scale = max(WIDTH / w, HEIGHT / h) * (1 + (i * 7 % 5) / 10)
            big = os.path.join(tmp, "big.v")
            run("vips", "resize", source, big, f"{scale:.4f}", "--kernel", "lanczos3")
            bw, bh = header(big, "width"), header(big, "height")
            left = (i * 7919) % max(1, bw - WIDTH + 1)
            top = (i * 104729) % max(1, bh - HEIGHT + 1)
            crop = os.path.join(tmp, "crop.v")
            run("vips", "crop", big, crop, str(left), str(top), str(WIDTH), str(HEIGHT))
            if i % 2:
                run("vips", "flip", crop, os.path.join(tmp, "flip.v"), "horizontal")
                os.replace(os.path.join(tmp, "flip.v"), crop)
            noise = os.path.join(tmp, "noise.v")
            run("vips", "gaussnoise", noise, str(WIDTH), str(HEIGHT), "--sigma", "2",
                "--mean", "0", "--seed", str(i))
            noisy = os.path.join(tmp, "noisy.v")
            run("vips", "add", crop, noise, noisy)
            final = os.path.join(tmp, "final.v")
            run("vips", "cast", noisy, final, "uchar")
            run("vips", "jpegsave", final, path, "--Q", "90", "--subsample-mode", "on",
                "--strip")
            print(f"\rphotos: {i + 1}/{COUNT}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)


if __name__ == "__main__":
    main()
