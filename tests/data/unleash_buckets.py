"""Regenerates unleash_buckets.json with an independent MurmurHash3 implementation.

    pip install mmh3 && python3 tests/data/unleash_buckets.py > tests/data/unleash_buckets.json

Unleash's gradual rollout puts a user in bucket
`murmur3_x86_32(f"{group_id}:{user_id}", seed=0) % 100 + 1` (hash read as unsigned),
and the user is in the rollout when bucket <= percentage.
"""
import json

import mmh3

raw = [("", 0), ("", 1), ("a", 0), ("ab", 0), ("abc", 0), ("abcd", 0), ("abcde", 0),
       ("hello", 0), ("Hello, world!", 0),
       ("The quick brown fox jumps over the lazy dog", 0), ("\u00e9t\u00e9", 0),
       ("abc", 0x9747B28C)]
groups = ["new-checkout", "checkout", "search-v2", "a"]
keys = ["alice", "bob", "carol", "", "123", "4f1c2d9e-77aa-4a11-9c0b-5e9d3b2a1f00",
        "tenant-007"] + [f"user-{i}" for i in range(60)]
print(json.dumps({
    "murmur3_x86_32": [
        {"input": s, "seed": seed, "hash": mmh3.hash(s.encode(), seed, signed=False)}
        for s, seed in raw
    ],
    "buckets": [
        {"group_id": g, "targeting_key": k,
         "bucket": mmh3.hash(f"{g}:{k}".encode(), 0, signed=False) % 100 + 1}
        for g in groups for k in keys
    ],
}, indent=1, ensure_ascii=False))
