#!/usr/bin/env python3
"""Compute an encrypted archive row's identity (its recipient_key), from docs/archive.md alone.

usage: row_identity.py RING_FILE MESSAGE_ID RECIPIENT
RING_FILE is what `imcrypt key unwrap` writes; the domain's first key version must be in it.
prints the 32-byte row identity as hex.
"""
import base64, hashlib, hmac, json, struct, sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ring = json.load(open(sys.argv[1]))["ring"]
first = min(ring["keys"], key=lambda k: k["version"])
key = HKDF(
    algorithm=hashes.SHA256(),
    length=32,
    salt=bytes.fromhex(ring["domain"]),
    info=b"imcrypt row identity v1",
).derive(base64.b64decode(first["key"]))
message_id = sys.argv[2].encode()
recipient = sys.argv[3].strip().lower().encode()
message = b"row\x00" + struct.pack(">I", len(message_id)) + message_id + recipient
print(hmac.new(key, message, hashlib.sha256).hexdigest())
