#!/usr/bin/env python3
"""Decrypt archived records given as JSON lines, written from docs/formats.md and
docs/viewer.md alone.

usage: decrypt_lines.py EXPORT_JSON KEY_DIR RECORDS_JSONL

EXPORT_JSON is the key export (for the domain id and the check values); KEY_DIR holds each
unwrapped key version as raw bytes in v<N>.key (as `openssl pkeyutl -decrypt` writes them).
Prints one line per record: "<row>\t<plaintext>" or "<row>\tERROR <reason>".
"""
import base64
import hashlib
import hmac
import json
import os
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def load_keys(export_path, key_dir):
    export = json.load(open(export_path))
    domain_id = bytes.fromhex(export["domain"])
    keys = {}
    for k in export["keys"]:
        raw = open(os.path.join(key_dir, f"v{k['version']}.key"), "rb").read()
        kcv = hmac.new(raw, b"imcrypt key check value v1", hashlib.sha256).hexdigest()[:16]
        assert kcv == k["check_value"], f"check value of version {k['version']}"
        keys[k["version"]] = raw
    return domain_id, keys


def open_record(keys, domain_id, metadata, rec):
    if rec[0] != 0x01:
        raise ValueError("format version")
    version = int.from_bytes(rec[1:5], "big")
    if version not in keys:
        raise KeyError(f"no key version {version}")
    n = rec[5]
    header, cluster = rec[: 6 + n], rec[6 : 6 + n]
    nonce, body = rec[6 + n : 18 + n], rec[18 + n :]
    record_key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=domain_id,
        info=b"imcrypt record key v1" + rec[1:5] + cluster,
    ).derive(keys[version])
    return AESGCM(record_key).decrypt(nonce, body, header + domain_id + metadata)


def main():
    domain_id, keys = load_keys(sys.argv[1], sys.argv[2])
    for number, line in enumerate(open(sys.argv[3]), start=1):
        if not line.strip():
            continue
        row = str(number)
        try:
            obj = json.loads(line)
            row = str(obj.get("row", number))
            rec = base64.b64decode(obj["record_b64"], validate=True)
            meta = base64.b64decode(obj.get("metadata_b64", ""), validate=True)
            print(f"{row}\t{open_record(keys, domain_id, meta, rec).decode()}")
        except Exception as e:  # one bad row never stops the others
            print(f"{row}\tERROR {type(e).__name__}")


if __name__ == "__main__":
    main()
