//! Every primitive imcrypt uses, held against Project Wycheproof's vectors (and RFC 7914's for
//! PBKDF2): all valid cases accepted, all invalid ones rejected, through our own code paths.

use std::path::PathBuf;

use imcrypt::crypto::aead::{AeadImpl, AeadKey};
use imcrypt::crypto::export::Unwrapper;
use imcrypt::crypto::mac::verify_hmac_sha256;
use imcrypt::crypto::password::pbkdf2_sha256;
use serde_json::Value;

/// The vectors are copied into the repository (tests/vectors/wycheproof/README.md says from
/// where, and their checksums), so a clone needs nothing beside it.
fn vectors(name: &str) -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/wycheproof").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("test vectors {} are required: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn hex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn tests_of(doc: &Value) -> impl Iterator<Item = (&Value, &Value)> {
    doc["testGroups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["tests"].as_array().unwrap().iter().map(move |t| (g, t)))
}

#[test]
fn aes_256_gcm_both_implementations() {
    let doc = vectors("aes_gcm_test.json");
    let mut counted = [0usize; 2];
    for (g, t) in tests_of(&doc) {
        if g["keySize"] != 256 || g["ivSize"] != 96 || g["tagSize"] != 128 {
            continue;
        }
        let key: [u8; 32] = hex(&t["key"]).try_into().unwrap();
        let iv: [u8; 12] = hex(&t["iv"]).try_into().unwrap();
        let (aad, msg, ct, tag) = (hex(&t["aad"]), hex(&t["msg"]), hex(&t["ct"]), hex(&t["tag"]));
        let id = &t["tcId"];
        let valid = t["result"] == "valid";
        for imp in AeadImpl::ALL {
            let k = AeadKey::new(imp, &key);
            let mut sealed = msg.clone();
            k.seal_in_place(&iv, &aad, &mut sealed, 0);
            let mut expected = ct.clone();
            expected.extend_from_slice(&tag);
            let opened = k.open(&iv, &aad, &expected);
            if valid {
                assert_eq!(sealed, expected, "tc {id} seal with {}", imp.name());
                assert_eq!(opened.as_deref().map(|v| &v[..]), Ok(&msg[..]), "tc {id} open");
                counted[0] += 1;
            } else {
                assert!(opened.is_err(), "tc {id} must be rejected by {}", imp.name());
                counted[1] += 1;
            }
        }
    }
    assert!(counted[0] >= 2 * 35 && counted[1] >= 2 * 20, "{counted:?}");
}

#[test]
fn aes_256_gcm_implementations_agree_byte_for_byte() {
    // Differential test: the same key, nonce, AAD and plaintext give identical ciphertexts.
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    let mut state = u64::from_le_bytes(seed[..8].try_into().unwrap());
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u8
    };
    for len in [0usize, 1, 15, 16, 17, 255, 256, 1000, 4096] {
        let key: [u8; 32] = std::array::from_fn(|_| next());
        let nonce: [u8; 12] = std::array::from_fn(|_| next());
        let aad: Vec<u8> = (0..len % 37).map(|_| next()).collect();
        let pt: Vec<u8> = (0..len).map(|_| next()).collect();
        let (mut a, mut b) = (pt.clone(), pt.clone());
        AeadKey::new(AeadImpl::Ring, &key).seal_in_place(&nonce, &aad, &mut a, 0);
        AeadKey::new(AeadImpl::RustCrypto, &key).seal_in_place(&nonce, &aad, &mut b, 0);
        assert_eq!(a, b, "length {len}");
    }
}

fn oaep_file(name: &str, expect_valid_to_pass: bool) -> (usize, usize) {
    let doc = vectors(name);
    let g = &doc["testGroups"][0];
    let un = Unwrapper::from_pkcs8_der(&hex(&g["privateKeyPkcs8"])).unwrap();
    assert_eq!(un.bits() as u64, g["keySize"].as_u64().unwrap());
    let (mut ok, mut rejected) = (0, 0);
    for (_, t) in tests_of(&doc) {
        let got = un.oaep_decrypt(&hex(&t["label"]), &hex(&t["ct"]));
        let id = &t["tcId"];
        if expect_valid_to_pass && t["result"] == "valid" {
            assert_eq!(got.as_deref().map(|v| &v[..]), Some(&hex(&t["msg"])[..]), "tc {id}");
            ok += 1;
        } else if t["result"] == "acceptable" {
            // None in these files; if one appears, imcrypt rejects it (stricter is safer).
            assert!(got.is_none(), "acceptable tc {id}: imcrypt rejects");
        } else {
            assert!(got.is_none(), "tc {id} ({}) must be rejected", t["comment"]);
            rejected += 1;
        }
    }
    (ok, rejected)
}

#[test]
fn rsa_oaep_sha256_mgf1_sha256_2048_3072_4096() {
    for bits in [2048, 3072, 4096] {
        let (ok, rejected) =
            oaep_file(&format!("rsa_oaep_{bits}_sha256_mgf1sha256_test.json"), true);
        assert!(ok > 10 && rejected > 5, "{bits}: {ok} valid, {rejected} invalid");
    }
}

#[test]
fn rsa_oaep_with_mgf1_sha1_is_rejected_as_a_whole() {
    let (ok, rejected) = oaep_file("rsa_oaep_3072_sha256_mgf1sha1_test.json", false);
    assert_eq!(ok, 0);
    assert!(rejected > 20, "{rejected}");
}

#[test]
fn hmac_sha256() {
    let doc = vectors("hmac_sha256_test.json");
    let mut n = 0;
    for (g, t) in tests_of(&doc) {
        let tag_bytes = g["tagSize"].as_u64().unwrap() as usize / 8;
        if tag_bytes < 10 {
            // Tags shorter than 80 bits are refused by our verifier outright.
            assert!(!verify_hmac_sha256(&hex(&t["key"]), &hex(&t["msg"]), &hex(&t["tag"])));
            continue;
        }
        let ok = verify_hmac_sha256(&hex(&t["key"]), &hex(&t["msg"]), &hex(&t["tag"]));
        assert_eq!(ok, t["result"] == "valid", "tc {} ({})", t["tcId"], t["comment"]);
        n += 1;
    }
    assert!(n > 50);
}

#[test]
fn pbkdf2_hmac_sha256_wycheproof() {
    let doc = vectors("pbkdf2_hmacsha256_test.json");
    for (_, t) in tests_of(&doc) {
        let mut out = vec![0u8; t["dkLen"].as_u64().unwrap() as usize];
        let iters = t["iterationCount"].as_u64().unwrap() as u32;
        pbkdf2_sha256(&hex(&t["password"]), &hex(&t["salt"]), iters, &mut out);
        assert_eq!(out == hex(&t["dk"]), t["result"] == "valid", "tc {}", t["tcId"]);
    }
}

#[test]
fn pbkdf2_hmac_sha256_rfc7914_section_11() {
    let cases: [(&[u8], &[u8], u32, &str); 2] = [
        (
            b"passwd",
            b"salt",
            1,
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc\
             49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783",
        ),
        (
            b"Password",
            b"NaCl",
            80000,
            "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56\
             a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f62b397f33c8d",
        ),
    ];
    for (p, s, c, dk) in cases {
        let mut out = [0u8; 64];
        pbkdf2_sha256(p, s, c, &mut out);
        assert_eq!(hex::encode(out), dk);
    }
}
