#!/usr/bin/env python3
"""Prints "<frames> <records>" over every brand's segment log under LOG_DIR,
reading frame headers only (format: docs/storage.md)."""
import os, struct, sys

root = sys.argv[1]
frames = records = 0
for brand in sorted(os.listdir(root)):
    for seg in sorted(os.listdir(os.path.join(root, brand))):
        if not seg.endswith(".seg"):
            continue
        with open(os.path.join(root, brand, seg), "rb") as f:
            while True:
                header = f.read(28)
                if len(header) < 28 or header[:4] != b"CDLF":
                    break
                length, first, last, _crc = struct.unpack("<IQQI", header[4:])
                frames += 1
                records += last - first + 1
                f.seek(length, 1)
print(frames, records)
