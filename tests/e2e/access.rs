//! Signed tokens with path rules: made with `keys generate`, `keys add` and
//! `token issue` as a person makes them, and every refusal a bad token
//! gets; the key set reaching a second edge through a real primary.

use crate::support::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::path::Path;
use std::time::Duration;

/// Runs the `turserver` binary; its stdout, or a panic with its stderr.
fn cli_ok(args: &[&str]) -> String {
    let out = cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "turserver {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A new key file in `dir`, added to `edge`'s key set (as `current` when
/// asked); its kid.
pub fn new_key(edge: &Server, dir: &Path, name: &str, current: bool) -> (String, std::path::PathBuf) {
    let file = dir.join(name);
    let kid = cli_ok(&["keys", "generate", "--out", file.to_str().unwrap()]);
    let url = edge.url("");
    let mut args = vec!["keys", "add", "--key", file.to_str().unwrap(), "--url", &url, "--token", TOKEN];
    if current {
        args.push("--current");
    }
    let listed = cli_ok(&args);
    assert!(listed.contains(&kid), "{listed}");
    (kid, file)
}

pub fn issue(key: &Path, allow: &[&str], ttl: &str) -> String {
    let mut args = vec!["token", "issue", "--key", key.to_str().unwrap(), "--sub", "ci", "--ttl", ttl];
    for a in allow {
        args.extend(["--allow", a]);
    }
    cli_ok(&args)
}

/// Signs `claims` with the key file's key, with `header` as given.
fn sign(key: &Path, header: serde_json::Value, claims: serde_json::Value) -> String {
    sign_raw(key, &header, &claims.to_string())
}

/// Signs claims written by hand (JSON that serde_json would not write).
fn sign_raw(key: &Path, header: &serde_json::Value, claims: &str) -> String {
    let pem = pem::parse(std::fs::read_to_string(key).unwrap()).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pem.contents()).unwrap();
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims));
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes())))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

pub fn put(edge: &Server, path: &str, token: &str, body: &str) -> (u16, String) {
    let r = client().put(edge.url(path)).bearer_auth(token).body(body.to_string()).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn a_signed_token_writes_only_where_its_rules_allow() {
    let edge = Server::local();
    let keys = TempDir::new("keys");
    let (kid, key) = new_key(&edge, keys.path(), "ci.key", false);
    let ci = issue(&key, &["docs/**:write,delete"], "10m");

    assert_eq!(put(&edge, "/docs/a.html", &ci, "a").0, 201);
    assert_eq!(put(&edge, "/docs/deep/b.css", &ci, "b").0, 201);
    let (status, why) = put(&edge, "/blog/a.html", &ci, "x");
    assert_eq!(status, 403, "{why}");
    assert!(why.contains("rules"), "{why}");
    assert_eq!(edge.get("/blog/a.html").status(), 404);
    assert_eq!(put(&edge, "/docsx/a.html", &ci, "x").0, 403, "a pattern is matched against whole segments");
    assert_eq!(put(&edge, "/docs/%2e%2e/blog/a.html", &ci, "x").0, 403, "patterns see the normalised path");
    assert_eq!(put(&edge, "/docs%2f..%2fblog/a.html", &ci, "x").0, 400, "an encoded slash never reaches a pattern");
    assert_eq!(edge.get("/blog/a.html").status(), 404);
    assert_eq!(edge.put("/blog/keep.txt", None, b"kept".to_vec()).status(), 201);
    let del = |path: &str| client().delete(edge.url(path)).bearer_auth(&ci).send().unwrap().status().as_u16();
    assert_eq!(del("/blog/keep.txt"), 403);
    assert_eq!(del("/docs/a.html"), 204);
    assert_eq!(edge.get("/blog/keep.txt").text().unwrap(), "kept");
    assert!(edge.logged("the token's rules do not allow this"), "refusals are logged with the token's sub");

    // A batch reaching outside the rules is refused whole.
    let batch = tar_of(&[("docs/c.txt", "c"), ("blog/d.txt", "d")]);
    let r = client().post(edge.url("/_api/batch")).bearer_auth(&ci).body(batch).send().unwrap();
    assert_eq!(r.status(), 403, "{}", r.text().unwrap());
    assert_eq!(edge.get("/docs/c.txt").status(), 404, "nothing of a refused batch is written");
    let batch = tar_of(&[("docs/c.txt", "c")]);
    assert_eq!(client().post(edge.url("/_api/batch")).bearer_auth(&ci).body(batch).send().unwrap().status(), 200);
    assert_eq!(edge.get("/docs/c.txt").text().unwrap(), "c");

    // What changes the whole site takes the write token.
    let r = client().put(edge.url("/_api/site")).bearer_auth(&ci).body("{}").send().unwrap();
    assert_eq!(r.status(), 403);
    let r = client().put(edge.url("/_turserver/worker")).bearer_auth(&ci).body("x").send().unwrap();
    assert_eq!(r.status(), 403);
    let r = client().post(edge.url(&format!("/_turserver/keys/{kid}/revoke"))).bearer_auth(&ci).send().unwrap();
    assert_eq!(r.status(), 403);

    // A token that allows nothing is a token: 403, not 401.
    let nothing = issue(&key, &[], "10m");
    assert_eq!(put(&edge, "/docs/e.txt", &nothing, "e").0, 403);
    // The write token still does everything.
    assert_eq!(edge.put("/anywhere/f.txt", None, b"f".to_vec()).status(), 201);
}

#[test]
fn bad_tokens_are_refused_with_a_reason_and_write_nothing() {
    let edge = Server::local();
    let keys = TempDir::new("bad-keys");
    let (kid, key) = new_key(&edge, keys.path(), "a.key", true);
    let stranger = keys.path().join("stranger.key");
    cli_ok(&["keys", "generate", "--out", stranger.to_str().unwrap()]);
    let allow = serde_json::json!([{"paths": "**", "actions": ["write"]}]);
    let header = serde_json::json!({"alg": "EdDSA", "kid": kid});
    let claims = |exp: u64| serde_json::json!({"sub": "t", "exp": exp, "allow": allow});
    let good = sign(&key, header.clone(), claims(now() + 600));
    assert_eq!(put(&edge, "/ok.txt", &good, "ok").0, 201, "the test's own signing is right");

    let big = "a".repeat(50_000);
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", sign(&key, header.clone(), claims(now() - 3600)), "expired"),
        ("not yet valid", sign(&key, header.clone(), serde_json::json!({"exp": now() + 7200, "nbf": now() + 3600, "allow": allow})), "not valid yet"),
        ("no exp", sign(&key, header.clone(), serde_json::json!({"allow": allow})), "exp"),
        ("unknown kid", sign(&key, serde_json::json!({"alg": "EdDSA", "kid": "nobody"}), claims(now() + 600)), "unknown key"),
        ("no kid", sign(&key, serde_json::json!({"alg": "EdDSA"}), claims(now() + 600)), "kid"),
        ("another key's signature", sign(&stranger, header.clone(), claims(now() + 600)), "signature"),
        ("algorithm not the key's", sign(&key, serde_json::json!({"alg": "ES256", "kid": kid}), claims(now() + 600)), "ES256"),
        ("alg none", format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"x"}"#), URL_SAFE_NO_PAD.encode(r#"{"exp":9999999999}"#)), "malformed"),
        ("bad base64", "e!!.e30.c2ln".to_string(), "malformed"),
        ("claims of the wrong type", sign(&key, header.clone(), serde_json::json!({"exp": now() + 600, "allow": "everything"})), "invalid token"),
        ("duplicate claims", sign_raw(&key, &header, &format!(r#"{{"exp":{},"exp":{},"allow":[]}}"#, now() + 600, now() + 600)), "invalid token"),
        ("unknown action", sign(&key, header.clone(), serde_json::json!({"exp": now() + 600, "allow": [{"paths": "**", "actions": ["own"]}]})), "unknown action"),
        ("bad pattern", sign(&key, header.clone(), serde_json::json!({"exp": now() + 600, "allow": [{"paths": "re:(", "actions": ["write"]}]})), "bad path pattern"),
        ("100 KB", format!("{big}.{big}.x"), "longer than"),
        ("claims nested 2,000 deep", sign_raw(&key, &header, &format!(r#"{{"exp":{},"allow":{}{}}}"#, now() + 600, "[".repeat(2000), "]".repeat(2000))), "invalid token"),
    ];
    for (name, token, reason) in &cases {
        let r = client().put(edge.url("/refused.txt")).bearer_auth(token).body("no").send().unwrap();
        let status = r.status().as_u16();
        let www = r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
        let body = r.text().unwrap();
        assert_eq!(status, 401, "{name}: {body}");
        assert!(body.contains(reason), "{name}: {body:?} lacks {reason:?}");
        assert_eq!(www.as_deref(), Some("Bearer error=\"invalid_token\""), "{name}");
    }
    assert_eq!(edge.get("/refused.txt").status(), 404, "no refused token wrote anything");
    // A bearer token that is neither the write token nor a JWT is wrong credentials.
    assert_eq!(put(&edge, "/refused.txt", "not-a-jwt", "no").0, 403);
}

#[test]
fn es256_keys_sign_tokens_and_links_too() {
    let edge = Server::local();
    let keys = TempDir::new("es256");
    let key = keys.path().join("p256.key");
    let kid = cli_ok(&["keys", "generate", "--alg", "ES256", "--out", key.to_str().unwrap()]);
    let url = edge.url("");
    let listed = cli_ok(&["keys", "add", "--key", key.to_str().unwrap(), "--current", "--url", &url, "--token", TOKEN]);
    assert!(listed.lines().any(|l| l.starts_with(&kid) && l.contains("ES256")), "{listed}");
    let token = issue(&key, &["p/**:write"], "10m");
    assert_eq!(put(&edge, "/p/a.txt", &token, "a").0, 201);
    assert_eq!(put(&edge, "/q/a.txt", &token, "a").0, 403);
    let link = cli_ok(&["url", "sign", "p/a.txt", "--key", key.to_str().unwrap(), "--ttl", "1m"]);
    assert_eq!(client().get(edge.url(&link)).send().unwrap().text().unwrap(), "a");
}

#[test]
fn keys_rotate_next_current_previous_revoked() {
    let edge = Server::local();
    let keys = TempDir::new("rotate");
    let (old_kid, old) = new_key(&edge, keys.path(), "old.key", true);
    let old_token = issue(&old, &["**:write"], "10m");
    assert_eq!(put(&edge, "/1.txt", &old_token, "1").0, 201);

    // The new key is published as next: accepted before anyone relies on it.
    let (new_kid, new) = new_key(&edge, keys.path(), "new.key", false);
    assert_eq!(put(&edge, "/2.txt", &issue(&new, &["**:write"], "10m"), "2").0, 201);
    let url = edge.url("");
    let listed = cli_ok(&["keys", "promote", &new_kid, "--url", &url, "--token", TOKEN]);
    assert!(listed.lines().any(|l| l.starts_with(&new_kid) && l.contains("current")), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with(&old_kid) && l.contains("previous")), "{listed}");
    assert_eq!(put(&edge, "/3.txt", &old_token, "3").0, 201, "previous keys are still accepted");

    cli_ok(&["keys", "revoke", &old_kid, "--url", &url, "--token", TOKEN]);
    let (status, why) = put(&edge, "/4.txt", &old_token, "4");
    assert_eq!(status, 401, "{why}");
    assert!(why.contains("revoked"), "{why}");
    let json: serde_json::Value = serde_json::from_str(&cli_ok(&["keys", "ls", "--json", "--url", &url, "--token", TOKEN])).unwrap();
    let states: Vec<(String, String)> = json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["kid"].as_str().unwrap().to_string(), k["state"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(states, [(old_kid.clone(), "revoked".to_string()), (new_kid.clone(), "current".to_string())]);
    // A revoked key cannot come back, and key operations take the write token.
    let r = client().post(edge.url(&format!("/_turserver/keys/{old_kid}/promote"))).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(client().get(edge.url("/_turserver/keys")).send().unwrap().status(), 401);
}

#[test]
fn a_key_added_on_one_edge_is_accepted_by_another_after_its_sync() {
    let primary = Sqld::start();
    let a = Server::replica(&primary, "200ms");
    let b = Server::replica(&primary, "200ms");
    let keys = TempDir::new("two-edges");
    let (kid, key) = new_key(&a, keys.path(), "k.key", true);
    let token = issue(&key, &["shared/**:write"], "10m");
    let accepted = eventually(Duration::from_secs(15), || (put(&b, "/shared/x.txt", &token, "x").0 == 201).then_some(()));
    assert!(accepted.is_some(), "edge B never accepted a key added on edge A");
    cli_ok(&["keys", "revoke", &kid, "--url", &a.url(""), "--token", TOKEN]);
    let refused = eventually(Duration::from_secs(15), || (put(&b, "/shared/y.txt", &token, "y").0 == 401).then_some(()));
    assert!(refused.is_some(), "edge B still accepts a key revoked on edge A");
    assert_eq!(b.get("/shared/y.txt").status(), 404);
}

#[test]
fn private_files_need_read_and_a_signed_link_opens_one() {
    let edge = Server::local();
    let keys = TempDir::new("private");
    let (_, key) = new_key(&edge, keys.path(), "k.key", true);
    let rules = r#"{"private": ["members/**"]}"#;
    assert_eq!(client().put(edge.url("/_api/site")).bearer_auth(TOKEN).body(rules).send().unwrap().status(), 200);
    assert_eq!(edge.put("/members/report.pdf", None, b"secret report".to_vec()).status(), 201);
    assert_eq!(edge.put("/members/other.pdf", None, b"other".to_vec()).status(), 201);
    assert_eq!(edge.put("/public.txt", None, b"hello".to_vec()).status(), 201);
    let reader = issue(&key, &["members/**:read"], "10m");
    let writer = issue(&key, &["members/**:write"], "10m");
    let c = client();
    let get = |url: String| {
        let r = c.get(url).send().unwrap();
        let status = r.status().as_u16();
        let cc = r.headers().get("cache-control").map(|v| v.to_str().unwrap().to_string());
        (status, cc, r.text().unwrap())
    };

    for _ in 0..2 {
        let (status, _, body) = get(edge.url("/members/report.pdf"));
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("token is required"), "{body}");
        let r = c.get(edge.url("/members/report.pdf")).bearer_auth(&reader).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-control"], "private, no-cache");
        assert_eq!(r.text().unwrap(), "secret report");
    }
    assert_eq!(c.get(edge.url("/members/report.pdf")).bearer_auth(&writer).send().unwrap().status(), 403);
    assert_eq!(get(edge.url("/public.txt")).0, 200);

    // A token in the query (for <img>) or a cookie, for reads only.
    assert_eq!(get(edge.url(&format!("/members/report.pdf?token={reader}"))).2, "secret report");
    let r = c.get(edge.url("/members/report.pdf")).header("cookie", format!("a=b; turserver_token={reader}")).send().unwrap();
    assert_eq!(r.text().unwrap(), "secret report");
    let admin_in_query = c.put(edge.url(&format!("/members/x.txt?token={TOKEN}"))).body("x").send().unwrap();
    assert_eq!(admin_in_query.status(), 401, "a write never takes its token from the URL");

    // Listings show private files only to who may read them.
    let listed = |token: Option<&str>| {
        let mut req = c.get(edge.url("/_api/files?prefix=members/"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let v: serde_json::Value = req.send().unwrap().json().unwrap();
        v["files"].as_array().unwrap().len()
    };
    assert_eq!(listed(None), 0);
    assert_eq!(listed(Some(&reader)), 2);

    // A signed link opens its one file, until it expires.
    let link = cli_ok(&["url", "sign", "members/report.pdf", "--key", key.to_str().unwrap(), "--ttl", "10m"]);
    let (status, cc, body) = get(edge.url(&link));
    assert_eq!((status, body.as_str()), (200, "secret report"), "{link}");
    assert_eq!(cc.as_deref(), Some("private, no-cache"));
    assert_eq!(c.head(edge.url(&link)).send().unwrap().status(), 200);
    let other = link.replacen("members/report.pdf", "members/other.pdf", 1);
    let (status, _, why) = get(edge.url(&other));
    assert_eq!(status, 403, "{why}");
    assert!(why.contains("signature"), "{why}");
    let exp: u64 = link.split("exp=").nth(1).unwrap().split('&').next().unwrap().parse().unwrap();
    let tampered = link.replace(&format!("exp={exp}"), &format!("exp={}", exp + 3600));
    assert_eq!(get(edge.url(&tampered)).0, 403);
    assert_eq!(c.put(edge.url(&link)).body("x").send().unwrap().status(), 401, "a link never writes");
    let short = cli_ok(&["url", "sign", "members/report.pdf", "--key", key.to_str().unwrap(), "--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let (status, _, why) = get(edge.url(&short));
    assert_eq!(status, 403);
    assert!(why.contains("expired"), "{why}");
}

/// The JWK of a key file's public half, under `kid`.
fn jwk_of(key: &Path, kid: &str) -> serde_json::Value {
    use ring::signature::KeyPair;
    let pem = pem::parse(std::fs::read_to_string(key).unwrap()).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pem.contents()).unwrap();
    serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())})
}

#[test]
fn keys_published_at_a_jwks_url_verify_tokens() {
    // Another turserver serves the key set document, as any web server would.
    let publisher = Server::local();
    let keys = TempDir::new("jwks");
    let (a, b) = (keys.path().join("a.key"), keys.path().join("b.key"));
    let kid_a = cli_ok(&["keys", "generate", "--out", a.to_str().unwrap()]);
    let kid_b = cli_ok(&["keys", "generate", "--out", b.to_str().unwrap()]);
    let publish = |jwks: serde_json::Value| {
        let r = client().put(publisher.url("/jwks.json")).bearer_auth(TOKEN).body(jwks.to_string()).send().unwrap();
        assert!(r.status().is_success());
    };
    publish(serde_json::json!({"keys": [jwk_of(&a, &kid_a), {"kty": "RSA", "kid": "ignored", "n": "x", "e": "AQAB"}]}));
    let dir = TempDir::new("jwks-edge");
    let edge = Server::start(&dir.path().join("data"), &["--jwks-url", &publisher.url("/jwks.json")], Some(dir));
    let with_a = issue(&a, &["**:write"], "10m");
    let ok = eventually(Duration::from_secs(10), || (put(&edge, "/a.txt", &with_a, "a").0 == 201).then_some(()));
    assert!(ok.is_some(), "a key from the JWKS URL is accepted");

    // A key published later: the first token naming it makes the edge fetch again.
    publish(serde_json::json!({"keys": [jwk_of(&a, &kid_a), jwk_of(&b, &kid_b)]}));
    assert_eq!(put(&edge, "/b.txt", &issue(&b, &["**:write"], "10m"), "b").0, 201);
    // Unknown kids do not make it fetch again within the minute.
    let stranger = keys.path().join("c.key");
    cli_ok(&["keys", "generate", "--out", stranger.to_str().unwrap()]);
    for _ in 0..5 {
        assert_eq!(put(&edge, "/c.txt", &issue(&stranger, &["**:write"], "10m"), "c").0, 401);
    }
    let fetched_twice = eventually(Duration::from_secs(10), || (edge.log().matches("fetched the JWKS").count() == 2).then_some(()));
    assert!(fetched_twice.is_some(), "{}", edge.log());
    // A key revoked in the stored key set stays revoked whatever the URL says.
    let url = edge.url("");
    let r = client()
        .post(edge.url("/_turserver/keys"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"kid": kid_a, "alg": "EdDSA", "x": jwk_of(&a, &kid_a)["x"], "state": "current"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    cli_ok(&["keys", "revoke", &kid_a, "--url", &url, "--token", TOKEN]);
    assert_eq!(put(&edge, "/a2.txt", &with_a, "a").0, 401);
}

#[test]
fn the_links_api_signs_with_a_secret_only_the_edges_hold() {
    let edge = Server::local();
    let keys = TempDir::new("links");
    let (_, key) = new_key(&edge, keys.path(), "k.key", true);
    let rules = r#"{"private": ["members/**"]}"#;
    assert_eq!(client().put(edge.url("/_api/site")).bearer_auth(TOKEN).body(rules).send().unwrap().status(), 200);
    assert_eq!(edge.put("/members/a.pdf", None, b"a".to_vec()).status(), 201);
    let reader = issue(&key, &["members/a.pdf:read"], "10m");
    let ask = |token: Option<&str>, body: serde_json::Value| {
        let mut req = client().post(edge.url("/_api/links")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let (status, why) = ask(Some(&reader), serde_json::json!({"path": "members/a.pdf"}));
    assert_eq!(status, 409, "no link secret yet: {why}");
    assert!(why.contains("--link-secret"), "{why}");

    let url = edge.url("");
    let listed = cli_ok(&["keys", "add", "--link-secret", "--current", "--url", &url, "--token", TOKEN]);
    assert!(listed.contains("HS256"), "{listed}");
    let shown = client().get(edge.url("/_turserver/keys")).bearer_auth(TOKEN).send().unwrap().text().unwrap();
    assert!(!shown.contains("\"k\""), "the secret is never shown: {shown}");
    let secret_kid = shown.split("\"kid\":\"").filter_map(|s| s.split('"').next()).find(|k| k.starts_with("link-")).unwrap().to_string();

    let (status, made) = ask(Some(&reader), serde_json::json!({"path": "members/a.pdf", "ttl": 60}));
    assert_eq!(status, 200, "{made}");
    let link = serde_json::from_str::<serde_json::Value>(&made).unwrap()["url"].as_str().unwrap().to_string();
    assert!(link.contains(&format!("kid={secret_kid}")), "{link}");
    assert_eq!(client().get(edge.url(&link)).send().unwrap().text().unwrap(), "a");
    assert_eq!(client().get(edge.url(&link.replace("a.pdf", "b.pdf"))).send().unwrap().status(), 403);
    assert_eq!(ask(None, serde_json::json!({"path": "members/a.pdf"})).0, 401);
    assert_eq!(ask(Some(&reader), serde_json::json!({"path": "members/other.pdf"})).0, 403, "only what the token may read");
    assert_eq!(ask(Some(&reader), serde_json::json!({"path": "members/a.pdf", "ttl": 999999999})).0, 400);
    assert_eq!(ask(Some(&reader), serde_json::json!({"path": "../x"})).0, 400);
    // The link secret verifies links, never tokens.
    let forged = hs256_token(&secret_kid);
    assert_eq!(put(&edge, "/members/x.txt", &forged, "x").0, 401);
    cli_ok(&["keys", "revoke", &secret_kid, "--url", &url, "--token", TOKEN]);
    assert_eq!(client().get(edge.url(&link)).send().unwrap().status(), 403, "a revoked secret's links stop working");
}

/// An HS256 token naming a kid, with a made-up signature (nobody outside
/// the edges knows a link secret).
fn hs256_token(kid: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#));
    let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{},"allow":[{{"paths":"**","actions":["write"]}}]}}"#, now() + 600));
    format!("{header}.{claims}.{}", URL_SAFE_NO_PAD.encode([7u8; 32]))
}
