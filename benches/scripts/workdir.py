"""Where the benchmark scripts put their files, and when they remove them.

On ext4 without a journal (this machine's root filesystem), creating a file
skips every free inode of its block group deleted in the last minute or so
(`recently_deleted` in the kernel's inode allocator), one lookup each: a
benchmark that runs right after another deleted its thousands of files pays
for that in every file it creates (1.7-2.4 % of all samples in ext4's inode
allocation over a run of #5 when each round's files were deleted after it,
0.25 % when they were kept until the end). So under
scripts/bench, which sets RUNNEL_BENCH_TMP, the scripts leave their files in
that directory for scripts/bench to remove once the suite is done; a script
run alone removes its own when it exits.
"""
import atexit
import os
import shutil
import tempfile


def make(prefix):
    """A new, empty directory for one run of a benchmark's side."""
    suite = os.environ.get("RUNNEL_BENCH_TMP")
    if suite:
        os.makedirs(suite, exist_ok=True)
        return tempfile.mkdtemp(prefix=prefix, dir=suite)
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
