//! Interop: what imcrypt writes, standard tools read. A key export made by imcrypt is unwrapped
//! by `openssl pkeyutl`; a record sealed by imcrypt is opened by a short Python script that
//! uses `cryptography` and follows docs/formats.md. scripts/test.sh installs both tools.

mod support;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use imcrypt::crypto::aead::AeadImpl;
use imcrypt::crypto::export::{Unwrapper, export_ring, parse_public_key};
use imcrypt::crypto::keyring::KeyRing;
use imcrypt::crypto::random::{NonceSource, new_key};
use imcrypt::crypto::record::RecordSealer;
use imcrypt::ids::{ClusterId, DomainId};
use support::{KeyKind, openssl_key_pair};

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {:?} ({e}); scripts/test.sh installs it", cmd.get_program())
    });
    assert!(out.status.success(), "{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn openssl_pkeyutl_unwraps_an_imcrypt_export() {
    let dir = tempfile::tempdir().unwrap();
    let pair = openssl_key_pair(dir.path(), "admin", KeyKind::Rsa(3072));
    let (sk_pem, pk_pem) = (pair.private_pem(), pair.public_pem());
    let mut ring = KeyRing::new(DomainId::from_bytes([7; 16]), 1_700_000_000, new_key());
    ring.rotate(1_700_000_100, new_key()).unwrap();
    let to = parse_public_key(&pk_pem).unwrap();
    assert_eq!(to.bits(), 3072);
    let doc = export_ring(&ring, &to, 1_700_000_200).unwrap();

    // The fingerprint is SHA-256 of the SPKI DER, as OpenSSL computes it.
    let der = run(Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(&pair.public));
    let fp = run(Command::new("python3")
        .args([
            "-c",
            "import sys,hashlib;print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(
            std::fs::File::open({
                let p = dir.path().join("spki.der");
                std::fs::write(&p, &der).unwrap();
                p
            })
            .unwrap(),
        ));
    assert_eq!(String::from_utf8(fp).unwrap().trim(), doc.recipient_sha256);

    for k in &doc.keys {
        let wrapped = dir.path().join(format!("v{}.bin", k.version));
        std::fs::write(
            &wrapped,
            base64::engine::general_purpose::STANDARD.decode(&k.wrapped_key).unwrap(),
        )
        .unwrap();
        let key = run(Command::new("openssl")
            .args(["pkeyutl", "-decrypt", "-inkey"])
            .arg(dir.path().join("admin.pem"))
            .args(["-pkeyopt", "rsa_padding_mode:oaep"])
            .args(["-pkeyopt", "rsa_oaep_md:sha256"])
            .args(["-pkeyopt", "rsa_mgf1_md:sha256"])
            .arg("-in")
            .arg(&wrapped));
        assert_eq!(&key[..], ring.get(k.version).unwrap().bytes(), "version {}", k.version);
    }

    // And imcrypt's own viewer path takes OpenSSL's PKCS#8 private key.
    let un = Unwrapper::from_pem(&sk_pem).unwrap();
    assert_eq!(un.unwrap_export(&doc).unwrap(), ring);
}

#[test]
fn python_cryptography_opens_an_imcrypt_record() {
    let ring = KeyRing::new(DomainId::from_bytes([9; 16]), 1, new_key());
    let cluster = ClusterId::new("im-east.example.com").unwrap();
    let sealer = RecordSealer::new(&ring, &cluster, AeadImpl::Ring, 0);
    sealer.counter().commit_reservation(1 << 20);
    let mut nonces = NonceSource::from_os();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/read_record.py");
    for (meta, plain) in [
        (&b"msg-1|bob@example.com"[..], &b"hello, compliance"[..]),
        (b"", b""),
        (b"m", &[0xffu8; 3000][..]),
    ] {
        let rec = sealer.seal(&mut nonces, meta, plain).unwrap();
        let out = run(Command::new("python3")
            .arg(&script)
            .arg(hex::encode(ring.primary().bytes()))
            .arg(ring.domain().to_string())
            .arg(hex::encode(meta))
            .arg(hex::encode(&rec)));
        assert_eq!(String::from_utf8(out).unwrap().trim(), hex::encode(plain));

        // The script refuses the record under other metadata, as imcrypt does.
        let status = Command::new("python3")
            .arg(&script)
            .arg(hex::encode(ring.primary().bytes()))
            .arg(ring.domain().to_string())
            .arg(hex::encode(b"another row"))
            .arg(hex::encode(&rec))
            .output()
            .unwrap()
            .status;
        assert!(!status.success());
    }
}
