#!/usr/bin/env python3
"""The disk's floor under a synced put: latency of a small overwrite plus fdatasync.

Each writer thread overwrites `--bytes` at rising offsets of its own file, written out and
synced first (so no write grows the file and each fdatasync carries data only, as the node's
written-out WAL files do; see src/storage/wal_size.rs), then calls fdatasync, `--iterations`
times. Runs once per writer count and prints p50/p90/p99 per count.

Why several writers: a one-client put syncs on three nodes at once on a one-machine cluster
(the leader and both followers), so the figure that bounds its p50 is the sync with three
writers, not one. Python's GIL is released during pwrite and fdatasync, so the threads' syncs
overlap as the nodes' do.

    perf/sync-floor.py [--dir DIR] [--writers 1,2,3] [--iterations 2000] [--bytes 600]
"""

import argparse
import os
import tempfile
import threading
import time

FILE_BYTES = 32 << 20


def writer(path, iterations, size, out):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        chunk = b"\x01" * (1 << 20)
        for offset in range(0, FILE_BYTES, len(chunk)):
            os.pwrite(fd, chunk, offset)
        os.fsync(fd)
        record = b"\x02" * size
        for i in range(iterations):
            started = time.perf_counter()
            os.pwrite(fd, record, (i * size) % (FILE_BYTES - size))
            os.fdatasync(fd)
            out.append((time.perf_counter() - started) * 1e6)
    finally:
        os.close(fd)
        os.unlink(path)


def quantile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where the files go (default: a temp dir)")
    parser.add_argument("--writers", default="1,2,3")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--bytes", type=int, default=600)
    args = parser.parse_args()
    if not 0 < args.bytes < FILE_BYTES:
        parser.error(f"--bytes must be between 1 and {FILE_BYTES - 1}")
    counts = [int(n) for n in args.writers.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="kahuna-sync-") as directory:
        print(f"# {os.cpu_count()} cores, {os.uname().release}; {directory}; "
              f"{args.bytes} B overwrite + fdatasync, {args.iterations} per writer")
        for count in counts:
            results = [[] for _ in range(count)]
            threads = [
                threading.Thread(target=writer, args=(os.path.join(directory, f"w{n}"),
                                                      args.iterations, args.bytes, results[n]))
                for n in range(count)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            values = sorted(v for result in results for v in result)
            if len(values) != count * args.iterations:
                raise SystemExit(f"a writer failed ({len(values)} of {count * args.iterations} syncs)")
            print(f"writers={count} p50_us={quantile(values, 0.5):.0f} "
                  f"p90_us={quantile(values, 0.9):.0f} p99_us={quantile(values, 0.99):.0f}")


if __name__ == "__main__":
    main()
