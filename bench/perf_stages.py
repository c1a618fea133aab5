#!/usr/bin/env python3
"""The daemon's CPU samples by stage of a request, from `perf script -F
comm,ip,sym` output of a recording with call graphs (`--call-graph
dwarf`): each sample goes to the first stage (in the order below) that
one of its frames names. Used by bench/perf-profile.sh (PERF_STAGES=1).

    python3 bench/perf_stages.py < perf-script.txt
"""
import collections
import sys

# (a frame containing this, the stage): first match wins, so the more
# specific come first (a signature batch run from a verifier thread is
# "verify: batch", not "verify: other").
STAGES = [
    ("verify_batch", "verify: batch"),
    ("verify_strict", "verify: single signature"),
    ("BatchVerifier::check", "verify: queueing"),
    ("verifier::worker", "verify: continuations (decode, route to the writer)"),
    ("fdatasync", "commit: fdatasync"),
    ("commit_in_order", "writer: commit hand-off"),
    ("BrandLog", "log: appends"),
    ("apply_in_order", "writer: apply (state machine, records, checkpoint)"),
    ("writer::", "writer: other"),
    ("write_vectored", "socket: writes (loopback delivery included)"),
    ("reply::", "reply: encoding, metrics"),
    ("recv", "socket: reads"),
    ("epoll_wait", "tokio: epoll"),
    ("Conn::handle", "connection: handling"),
    ("ClientMessage", "connection: decoding"),
    ("read_loop", "connection: read loop"),
    ("tokio::runtime", "tokio: scheduler"),
]


def main():
    total = 0
    by_stage = collections.Counter()
    for sample in sys.stdin.read().split("\n\n"):
        frames = [line.strip() for line in sample.strip().split("\n") if line.strip()]
        if len(frames) < 2:
            continue
        total += 1
        text = "\n".join(frames)
        stage = next((name for key, name in STAGES if key in text), "other")
        by_stage[stage] += 1
    for stage, n in by_stage.most_common():
        print(f"  {100 * n / max(total, 1):6.2f}%  {stage}")
    print(f"  ({total} samples)")


if __name__ == "__main__":
    main()
