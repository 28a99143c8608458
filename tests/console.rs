//! The web console in a real browser: Debian's Chromium, headless, driven through Debian's
//! chromedriver (both installed by scripts/test.sh) against real daemons on 127.0.0.1. Each
//! page it visits is saved as a screenshot in docs/console/, which docs/console.md shows.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use fantoccini::{Client, ClientBuilder, Locator};
use imcrypt::admin::api::Role;
use imcrypt::cluster::Command;
use imcrypt::demo::Lab;
use support::{
    KeyKind, PASSWORD, ReservedPort, WAIT, debian_binary, has_alarm, imcrypt, is_slave_of,
    openssl_key_pair, s,
};

/// chromedriver on a port of its own, killed when dropped.
struct Driver {
    child: std::process::Child,
    port: u16,
    _profile: tempfile::TempDir,
    downloads: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        let bin = debian_binary("/usr/bin/chromedriver", "chromium-driver");
        debian_binary("/usr/bin/chromium", "chromium");
        let port = ReservedPort::new().unwrap().port();
        let child = std::process::Command::new(bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let d = Driver {
            child,
            port,
            _profile: tempfile::tempdir().unwrap(),
            downloads: tempfile::tempdir().unwrap(),
        };
        support::wait_for("chromedriver to listen", WAIT, async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()
        })
        .await;
        d
    }

    /// A new headless browser session: a fresh profile, downloads into `downloads`, the
    /// daemon's development certificate accepted (it names the cluster, not 127.0.0.1), and
    /// the browser's console log kept for [`console_errors`].
    async fn browser(&self) -> Client {
        let profile = tempfile::tempdir_in(self._profile.path()).unwrap().keep();
        let caps = serde_json::json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1100", "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", profile.display()),
                ],
                "prefs": {
                    "download.default_directory": self.downloads.path(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let serde_json::Value::Object(caps) = caps else { unreachable!() };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromedriver session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver's log of the browser's console (an extension command it serves in W3C mode).
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (hyper::Method, Option<String>) {
        (hyper::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// The browser console's entries at level SEVERE since the last call.
async fn console_errors(c: &Client) -> Vec<String> {
    let log = c.issue_cmd(BrowserLog).await.expect("the browser log");
    log.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Saves the page as docs/console/NAME.png.
async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// The text of the element `css`, waiting for it to be there (a form's answer is a redirect
/// and a new page; the overview's live part is replaced every 2 s).
async fn text(c: &Client, css: &str) -> String {
    support::wait_for(&format!("the element {css}"), WAIT, async || {
        c.find(Locator::Css(css)).await.ok()?.text().await.ok()
    })
    .await
}

/// Polls until the element `css` has attribute `attr` = `want` (the picture refreshes every
/// 2 s without a reload).
async fn wait_attr(c: &Client, css: &str, attr: &str, want: &str) {
    support::wait_for(&format!("{css} [{attr}={want}]"), WAIT, async || {
        let e = c.find(Locator::Css(css)).await.ok()?;
        (e.attr(attr).await.ok()?? == want).then_some(())
    })
    .await;
}

/// Polls until the page's `css` text contains `want`, reloading between tries.
async fn wait_text(c: &Client, url: &str, css: &str, want: &str) {
    support::wait_for(&format!("{css} to say {want:?}"), WAIT, async || {
        c.goto(url).await.ok()?;
        let t = c.find(Locator::Css(css)).await.ok()?.text().await.ok()?;
        t.contains(want).then_some(())
    })
    .await;
}

/// Fills the form `css` with `fields` (by name) and submits it.
async fn submit(c: &Client, css: &str, fields: &[(&str, &str)]) {
    let mut f = c.form(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
    for (name, value) in fields {
        f = f.set_by_name(name, value).await.unwrap();
    }
    f.submit().await.unwrap();
}

/// An administrator token of `role` for cluster `id`, made on its host with the CLI.
async fn token(lab: &Lab, id: &str, name: &str, role: &str) -> String {
    let cfg = lab.dir().join(format!("{id}.toml"));
    let o = imcrypt(
        &["admin", "token", "create", "--name", name, "--role", role, "--local", "-c", s(&cfg)],
        "",
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    o.stdout.trim().to_owned()
}

/// Runs `script` in the page (an async function body that ends with `return`), e.g. a `fetch`.
async fn js(c: &Client, script: &str) -> serde_json::Value {
    let wrapped = format!(
        "const done = arguments[arguments.length - 1]; (async () => {{ {script} }})().then(done, \
         e => done(String(e)));"
    );
    c.execute_async(&wrapped, vec![]).await.unwrap()
}

/// a, b and c peered with each other; d runs alone (it meets a later).
async fn three_and_a_stranger(dir: &Path) -> Lab {
    let mut lab = Lab::new(dir, &["a", "b", "c", "d"]).unwrap();
    lab.peer("a", "b");
    lab.peer("a", "c");
    lab.peer("b", "c");
    for id in ["a", "b", "c", "d"] {
        lab.start(id).await.unwrap();
    }
    lab
}

fn console_url(lab: &Lab, path: &str) -> String {
    format!("https://{}{path}", lab.daemon("a").unwrap().admin_addr())
}

async fn log_in(c: &Client, lab: &Lab, token: &str) {
    c.goto(&console_url(lab, "/ui/")).await.unwrap();
    let url = c.current_url().await.unwrap();
    assert!(url.path().ends_with("/ui/login"), "not logged in yet, but at {url}");
    submit(c, "#login", &[("token", token)]).await;
    if c.wait().for_element(Locator::Css("#who-name")).await.is_err() {
        let url = c.current_url().await.unwrap();
        panic!("not logged in: at {url}: {}", c.source().await.unwrap_or_default());
    }
}

/// Submits the logout form and waits for its answer, the login page: `submit` returns once
/// the form is sent, and a `goto` before the answer would cancel the navigation and keep the
/// session alive.
async fn log_out(c: &Client) {
    submit(c, "#logout", &[]).await;
    if c.wait().for_element(Locator::Css("#login")).await.is_err() {
        let url = c.current_url().await.unwrap();
        panic!("not logged out: at {url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_runs_the_domain_from_the_console_in_a_real_browser() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let dir = tempfile::tempdir().unwrap();
        let mut lab = three_and_a_stranger(dir.path()).await;
        let admin = token(&lab, "a", "alice", "admin").await;
        let driver = Driver::start().await;
        let c = driver.browser().await;

        // The login page, then the overview: who and which role, and the three clusters.
        c.goto(&console_url(&lab, "/ui/login")).await.unwrap();
        screenshot(&c, "login").await;
        log_in(&c, &lab, &admin).await;
        assert_eq!(text(&c, "#who-name").await, "alice");
        assert_eq!(text(&c, "#who-role").await, "admin");
        for id in ["a", "b", "c"] {
            let css = format!("#domain g.node[data-cluster='{id}']");
            wait_attr(&c, &css, "data-role", "off").await;
        }
        let cookies = c.get_all_cookies().await.unwrap();
        let session = cookies.iter().find(|k| k.name() == "__Host-imcrypt-console").unwrap();
        assert_eq!(
            (session.secure(), session.http_only(), format!("{:?}", session.same_site())),
            (Some(true), Some(true), "Some(Strict)".to_owned()),
            "the session cookie is Secure, HttpOnly and SameSite=Strict"
        );
        assert_eq!(js(&c, "return document.cookie;").await, "", "HttpOnly: no script reads it");

        // Enable with "enable on remote clusters" in a second tab, and watch b and c become
        // slaves in the picture of the first, which refreshes itself: the page is never
        // reloaded (a reload would drop the marker set in it).
        let overview = c.window().await.unwrap();
        js(&c, "window.imcryptMarker = 'kept'; return null;").await;
        let tab = c.new_window(true).await.unwrap().handle;
        c.switch_to_window(tab).await.unwrap();
        c.goto(&console_url(&lab, "/ui/encryption")).await.unwrap();
        screenshot(&c, "encryption-off").await;
        c.find(Locator::Css("#enable-remote")).await.unwrap().click().await.unwrap();
        submit(&c, "#enable", &[("password", PASSWORD)]).await;
        let flash = text(&c, "#flash").await;
        assert!(flash.contains("encryption enabled"), "{flash}");
        c.switch_to_window(overview).await.unwrap();
        wait_attr(&c, "#domain g.node[data-cluster='a']", "data-role", "master").await;
        for id in ["b", "c"] {
            let css = format!("#domain g.node[data-cluster='{id}']");
            wait_attr(&c, &css, "data-role", "slave").await;
        }
        assert_eq!(js(&c, "return window.imcryptMarker;").await, "kept", "no reload");
        screenshot(&c, "overview").await;

        // Rotate.
        c.goto(&console_url(&lab, "/ui/keys")).await.unwrap();
        submit(&c, "#rotate", &[]).await;
        assert!(text(&c, "#flash").await.contains("new key version 2 is primary"));
        assert!(text(&c, "#versions").await.contains("1, 2 (primary 2)"));

        // Download the keys for a public key made by openssl: its size and fingerprint are
        // shown first, then the export comes as a file, which openssl pkeyutl unwraps.
        let pair = openssl_key_pair(dir.path(), "alice", KeyKind::Rsa(3072));
        c.find(Locator::Css("#public-key-pem"))
            .await
            .unwrap()
            .send_keys(&pair.public_pem())
            .await
            .unwrap();
        submit(&c, "#check-key", &[]).await;
        assert_eq!(text(&c, "#key-bits").await, "3072");
        let fingerprint = text(&c, "#key-fingerprint").await;
        screenshot(&c, "keys").await;
        submit(&c, "#download", &[("password", PASSWORD)]).await;
        let file = support::wait_for("the downloaded export", WAIT, async || {
            std::fs::read_dir(driver.downloads.path())
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "json"))
        })
        .await;
        let export: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(export["recipient_sha256"], fingerprint.as_str());
        let ring = lab.daemon("a").unwrap().key_ring().borrow().clone().unwrap();
        let keys = export["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        for k in keys {
            let v = k["version"].as_u64().unwrap();
            let wrapped = dir.path().join(format!("v{v}.bin"));
            let b64 = k["wrapped_key"].as_str().unwrap();
            std::fs::write(
                &wrapped,
                base64::engine::general_purpose::STANDARD.decode(b64).unwrap(),
            )
            .unwrap();
            let out = std::process::Command::new("openssl")
                .args(["pkeyutl", "-decrypt", "-inkey", s(&pair.private)])
                .args(["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256"])
                .args(["-pkeyopt", "rsa_mgf1_md:sha256", "-in", s(&wrapped)])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let version = imcrypt::ids::KeyVersion::new(v as u32).unwrap();
            assert_eq!(&out.stdout[..], ring.get(version).unwrap().bytes(), "version {v}");
        }

        // MultiMaster: d, master of a domain of its own, is peered with a (added here in the
        // console, and on d's side by its own administrator); the alarm appears on a, in the
        // picture and on the alarms page, and clears when the console removes the peer.
        lab.daemon("d").unwrap().command(support::enable(false)).await.unwrap();
        let a_addr = lab.peer_listen("a").unwrap().to_string();
        let d_addr = lab.peer_listen("d").unwrap().to_string();
        let add_a = Command::AddPeer { peer: imcrypt::demo::cid("a"), address: a_addr };
        lab.daemon("d").unwrap().command(add_a).await.unwrap();
        c.goto(&console_url(&lab, "/ui/peers")).await.unwrap();
        submit(&c, "#peer-add", &[("id", "d"), ("address", &d_addr)]).await;
        assert!(text(&c, "#flash").await.contains("cluster d is now a peer"));
        lab.wait_until("a", "MultiMaster about d", WAIT, |s| {
            has_alarm(s, support::AlarmName::MultiMaster, "d")
        })
        .await
        .unwrap();
        c.goto(&console_url(&lab, "/ui/")).await.unwrap();
        wait_attr(&c, "#domain line.link[data-peer='d']", "class", "link up conflict").await;
        screenshot(&c, "multimaster").await;
        wait_text(
            &c,
            &console_url(&lab, "/ui/alarms"),
            "#active-alarms",
            "MAencryptionMultiMaster",
        )
        .await;
        screenshot(&c, "alarms").await;
        c.goto(&console_url(&lab, "/ui/peers")).await.unwrap();
        let remove = c.find(Locator::Css("tr[data-peer='d'] form")).await.unwrap();
        remove.find(Locator::Css("button")).await.unwrap().click().await.unwrap();
        c.wait().for_element(Locator::Css("#flash")).await.unwrap();
        assert!(text(&c, "#flash").await.contains("no longer a peer"));
        wait_text(&c, &console_url(&lab, "/ui/alarms"), "main", "No active alarm.").await;
        assert!(text(&c, "#alarm-history").await.contains("cleared"));

        // The audit trail: the console's acts are there under alice's name, and the chain
        // verifies.
        c.goto(&console_url(&lab, "/ui/audit?actor=alice")).await.unwrap();
        assert!(
            text(&c, "#chain").await.starts_with("Chain intact"),
            "{}",
            text(&c, "#chain").await
        );
        let actions = text(&c, "#audit-records").await;
        for a in [
            "console.login",
            "encryption.enable",
            "key.rotate",
            "key.download",
            "peer.add",
            "peer.remove",
        ] {
            assert!(actions.contains(a), "{a} in {actions}");
        }
        screenshot(&c, "audit").await;

        // No page logged an error in the browser's console (a CSP violation would).
        assert_eq!(console_errors(&c).await, Vec::<String>::new());

        // Security headers on a page.
        let headers = js(
            &c,
            "const r = await fetch('/ui/'); return [r.headers.get('content-security-policy'), \
             r.headers.get('x-frame-options'), r.headers.get('cache-control')];",
        )
        .await;
        let csp = headers[0].as_str().unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!((headers[1].as_str(), headers[2].as_str()), (Some("DENY"), Some("no-store")));

        // Log out: the session is gone, the console asks for the token again.
        log_out(&c).await;
        c.goto(&console_url(&lab, "/ui/alarms")).await.unwrap();
        assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));
        c.close().await.unwrap();
        lab.stop_all().await;
    })
    .await
    .expect("the console test ends within 240 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_no_actions_and_forged_or_forbidden_posts_change_nothing() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let dir = tempfile::tempdir().unwrap();
        let mut lab = three_and_a_stranger(dir.path()).await;
        lab.daemon("a").unwrap().command(support::enable(true)).await.unwrap();
        for id in ["b", "c"] {
            lab.wait_until(id, "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        }
        let viewer = token(&lab, "a", "victor", "viewer").await;
        let admin = token(&lab, "a", "alice", "admin").await;
        let driver = Driver::start().await;
        let c = driver.browser().await;

        // A viewer reads every page but is offered no action.
        log_in(&c, &lab, &viewer).await;
        assert_eq!(text(&c, "#who-role").await, "viewer");
        wait_attr(&c, "#domain g.node[data-cluster='b']", "data-role", "slave").await;
        for page in ["/ui/", "/ui/encryption", "/ui/keys", "/ui/peers", "/ui/alarms", "/ui/audit"] {
            c.goto(&console_url(&lab, page)).await.unwrap();
            let forms = c.find_all(Locator::Css("form.action")).await.unwrap();
            assert!(forms.is_empty(), "{page} offers a viewer {} actions", forms.len());
        }
        screenshot(&c, "viewer").await;
        assert_eq!(console_errors(&c).await, Vec::<String>::new());

        // Posting anyway, with the session's own CSRF token: 403, nothing changes.
        let before = lab.status("a").await.unwrap();
        let post = |action: &str, with_csrf: bool| {
            format!(
                "const csrf = document.querySelector('#logout input[name=csrf]').value; \
                 const body = new URLSearchParams({}); \
                 const r = await fetch('/ui/act/{action}', {{method: 'POST', body}}); \
                 return [r.status, await r.text()];",
                if with_csrf { "{csrf}" } else { "{}" }
            )
        };
        let r = js(&c, &post("rotate", true)).await;
        assert_eq!(r[0], 403, "{r}");
        assert!(r[1].as_str().unwrap().contains("needs the role"), "{r}");
        let r = js(&c, &post("enable", true)).await;
        assert_eq!(r[0], 403, "{r}");

        // An admin's form without its CSRF token is refused too.
        log_out(&c).await;
        log_in(&c, &lab, &admin).await;
        let r = js(&c, &post("rotate", false)).await;
        assert_eq!(r[0], 403, "{r}");
        assert!(r[1].as_str().unwrap().contains("CSRF"), "{r}");
        // And one whose CSRF token is not this session's.
        let r = js(
            &c,
            "const body = new URLSearchParams({csrf: '00'.repeat(32)}); \
             const r = await fetch('/ui/act/rotate', {method: 'POST', body}); return r.status;",
        )
        .await;
        assert_eq!(r, 403);
        let after = lab.status("a").await.unwrap();
        assert_eq!(
            (after.role, after.key_versions.clone(), after.epoch),
            (Role::Master, before.key_versions.clone(), before.epoch),
            "refused posts changed nothing"
        );
        // Each refusal is in the audit trail, as the API's refusals are.
        let trail = std::fs::read_to_string(dir.path().join("state/a/audit.log")).unwrap();
        let recorded = |who: &str, code: &str| {
            trail.lines().any(|l| {
                l.contains("\"key.rotate\"")
                    && l.contains("\"refused\"")
                    && l.contains(who)
                    && l.contains(&format!("\"code\":\"{code}\""))
            })
        };
        assert!(recorded("victor", "role_forbidden"), "{trail}");
        assert!(recorded("alice", "cross_site"), "{trail}");
        // The same form with its token does rotate: the refusals were the checks, not a
        // broken form.
        let r = js(&c, &post("rotate", true)).await;
        assert_eq!(r[0], 200, "{r}");
        let after = lab.status("a").await.unwrap();
        assert_eq!(after.key_versions.len(), before.key_versions.len() + 1);
        c.close().await.unwrap();
        lab.stop_all().await;
    })
    .await
    .expect("the console test ends within 180 s");
}
