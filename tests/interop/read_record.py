#!/usr/bin/env python3
"""Decrypt one imcrypt archived record, written from docs/formats.md alone.

usage: read_record.py DOMAIN_KEY_HEX DOMAIN_ID_HEX METADATA_HEX RECORD_HEX
prints the plaintext as hex; exits 1 when the record does not authenticate.
"""
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def open_record(domain_key: bytes, domain_id: bytes, metadata: bytes, rec: bytes) -> bytes:
    assert rec[0] == 0x01, "format version"
    key_version = rec[1:5]  # big-endian u32, used as-is in the HKDF info
    n = rec[5]
    cluster_id = rec[6 : 6 + n]
    header = rec[: 6 + n]
    nonce = rec[6 + n : 18 + n]
    body = rec[18 + n :]  # ciphertext || 16-byte tag, as AESGCM expects
    record_key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=domain_id,
        info=b"imcrypt record key v1" + key_version + cluster_id,
    ).derive(domain_key)
    aad = header + domain_id + metadata
    return AESGCM(record_key).decrypt(nonce, body, aad)


if __name__ == "__main__":
    key, dom, meta, rec = (bytes.fromhex(a) for a in sys.argv[1:5])
    try:
        print(open_record(key, dom, meta, rec).hex())
    except Exception as e:  # InvalidTag and malformed input alike
        print(f"cannot open record: {type(e).__name__}", file=sys.stderr)
        sys.exit(1)
