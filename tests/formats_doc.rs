//! docs/formats.md carries worked examples in hex. This test computes them from the code and
//! fails when the document differs, so the page cannot drift from what imcrypt writes.
//! `IMCRYPT_BLESS=1 cargo test --test formats_doc` rewrites the blocks after a deliberate change.

use std::path::PathBuf;

use imcrypt::crypto::aead::{AeadImpl, AeadKey};
use imcrypt::crypto::export::check_value;
use imcrypt::crypto::keyring::{DomainKey, KeyRing};
use imcrypt::crypto::record::{RECORD_KEY_INFO, RecordOpener, RecordSealer, record_key};
use imcrypt::ids::{ClusterId, DomainId, KeyVersion};
use zeroize::Zeroizing;

fn spaced(b: &[u8]) -> String {
    b.chunks(16).map(hex::encode).collect::<Vec<_>>().join("\n                  ")
}

fn record_example() -> String {
    let key: [u8; 32] = std::array::from_fn(|i| i as u8);
    let domain = DomainId::from_bytes(std::array::from_fn(|i| 0xa0 + i as u8));
    let v2 = KeyVersion::new(2).unwrap();
    let ring =
        KeyRing::from_keys(domain, v2, [DomainKey::new(v2, 0, Zeroizing::new(key))]).unwrap();
    let cluster = ClusterId::new("east").unwrap();
    let nonce: [u8; 12] = hex::decode("cafebabefacedbaddecaf888").unwrap().try_into().unwrap();
    let metadata = b"msg-42|bob@example.com";
    let plaintext = b"Hello, compliance.";

    let mut info = RECORD_KEY_INFO.to_vec();
    info.extend_from_slice(&2u32.to_be_bytes());
    info.extend_from_slice(b"east");
    let rk = record_key(domain, v2, "east", &key);
    let sealer = RecordSealer::new(&ring, &cluster, AeadImpl::Ring, 0);
    let rec = sealer.seal_with_fixed_nonce_for_docs(&nonce, metadata, plaintext);
    // The example must open like any record, with either implementation.
    for imp in AeadImpl::ALL {
        let pt = RecordOpener::new(&ring, imp).open(&rec, metadata).unwrap();
        assert_eq!(&pt[..], plaintext);
    }
    let header_len = 6 + 4;
    let mut aad = rec[..header_len].to_vec();
    aad.extend_from_slice(domain.as_bytes());
    aad.extend_from_slice(metadata);
    let body = &rec[header_len + 12..];
    let (ct, tag) = body.split_at(body.len() - 16);
    format!(
        "domain key (v2)   {}\n\
         domain id (salt)  {}\n\
         HKDF info         {}\n\
         record key        {}\n\
         nonce             {}\n\
         metadata          {} (\"{}\")\n\
         plaintext         {} (\"{}\")\n\
         associated data   {}\n\
         record            01 | 00000002 | 04 | 65617374 | {} |\n                  \
         {} |\n                  {}\n\
         key check value   {} (of the domain key above)",
        spaced(&key),
        spaced(domain.as_bytes()),
        spaced(&info),
        spaced(&rk[..]),
        hex::encode(nonce),
        hex::encode(metadata),
        String::from_utf8_lossy(metadata),
        hex::encode(plaintext),
        String::from_utf8_lossy(plaintext),
        spaced(&aad),
        hex::encode(nonce),
        hex::encode(ct),
        hex::encode(tag),
        check_value(&key),
    )
}

fn state_example() -> String {
    // The state sealing key is HKDF-SHA256(ikm = node key, salt = none, info).
    let node_key = [0x42u8; 32];
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, &node_key);
    let mut k = [0u8; 32];
    hk.expand(b"imcrypt seal state v1", &mut k).unwrap();
    // Cross-check against the key the store really uses: it must open what this key seals.
    let nk = imcrypt::crypto::seal::NodeKey::from_bytes(node_key);
    let used = nk.sealing_key(imcrypt::crypto::seal::Purpose::State);
    let mut sealed = b"{}".to_vec();
    AeadKey::new(AeadImpl::RustCrypto, &k).seal_in_place(&[0; 12], b"h", &mut sealed, 0);
    assert_eq!(&used.open(&[0; 12], b"h", &sealed).unwrap()[..], b"{}");
    format!(
        "node key          {}\n\
         HKDF info         {} (\"imcrypt seal state v1\")\n\
         sealing key       {}",
        spaced(&node_key),
        hex::encode(b"imcrypt seal state v1"),
        spaced(&k),
    )
}

/// Two chained audit records as `audit.log` holds them, and the hash each passes on.
fn audit_example() -> String {
    use imcrypt::audit::{Actor, Entry, GENESIS, Outcome, hash_line};
    let first = Entry {
        seq: 1,
        prev: hex::encode(GENESIS),
        time: "2026-12-01T14:00:00.000Z".into(),
        cluster: "a".into(),
        actor: Actor::Admin { name: "admin".into(), role: "admin".into() },
        source: Some("127.0.0.1:50522".into()),
        action: "key.rotate".into(),
        target: String::new(),
        result: Outcome::Ok,
        reason: None,
        details: serde_json::from_str(r#"{"primary":2}"#).unwrap(),
    }
    .line();
    let h1 = hash_line(first.as_bytes());
    let second = Entry {
        seq: 2,
        prev: hex::encode(h1),
        time: "2026-12-01T14:00:05.250Z".into(),
        cluster: "a".into(),
        actor: Actor::Anonymous,
        source: Some("127.0.0.1:50530".into()),
        action: "key.download".into(),
        target: String::new(),
        result: Outcome::Refused,
        reason: Some("the admin token is not valid for this daemon".into()),
        details: serde_json::from_str(r#"{"code":"wrong_token"}"#).unwrap(),
    }
    .line();
    let h2 = hash_line(second.as_bytes());
    // What Python's json reads back is what was written.
    let back: Entry = serde_json::from_str(&second).unwrap();
    assert_eq!(back.line(), second);
    format!(
        "record 1   {first}\n\
         sha256     {}\n\
         record 2   {second}\n\
         sha256     {}",
        hex::encode(h1),
        hex::encode(h2),
    )
}

fn check_block(doc: &mut String, name: &str, body: &str, bless: bool) -> bool {
    let start = format!("<!-- example:{name} -->\n```text\n");
    let end = "\n```\n<!-- /example -->";
    let s = doc.find(&start).unwrap_or_else(|| panic!("docs/formats.md lacks the {name} block"));
    let from = s + start.len();
    let to = from + doc[from..].find(end).expect("block end marker");
    if &doc[from..to] == body {
        return true;
    }
    if bless {
        doc.replace_range(from..to, body);
        return true;
    }
    eprintln!("--- expected {name} block ---\n{body}\n---");
    false
}

#[test]
fn worked_examples_in_docs_formats_md_are_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/formats.md");
    let mut doc = std::fs::read_to_string(&path).unwrap();
    let bless = std::env::var_os("IMCRYPT_BLESS").is_some();
    let a = check_block(&mut doc, "record", &record_example(), bless);
    let b = check_block(&mut doc, "state", &state_example(), bless);
    let c = check_block(&mut doc, "audit", &audit_example(), bless);
    if bless {
        std::fs::write(&path, &doc).unwrap();
    }
    assert!(
        a && b && c,
        "docs/formats.md is out of date; run with IMCRYPT_BLESS=1 and review the diff"
    );
}
