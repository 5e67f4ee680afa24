//! Who is calling, against the real server over TCP: player tokens of every
//! key kind (HS256 secret, RS256 and ES256 PEM keys, a JWKS file, and a JWKS
//! served over HTTPS that rotates), the tokens that must be refused and
//! their statuses, impersonation, the join-restricting claims, and the admin
//! credential SessionService needs.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use common::certs::{self, Ca};
use common::jwt::{self, SECRET, claims, hs256, now, sign, with};
use common::{Connect, Player, TestServer, WAIT, assert_status, bearer, join_mode, join_session};
use game_session::Config;
use game_session::pb::{self, PresenceKind, server_message};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tonic::Code;

const RSA_1: &str = include_str!("fixtures/jwt/rsa-1.key.pem");
const RSA_2: &str = include_str!("fixtures/jwt/rsa-2.key.pem");
const EC_1: &str = include_str!("fixtures/jwt/ec-1.key.pem");

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt").join(name)
}

fn rs256(pem: &str, kid: Option<&str>, claims: &Value) -> String {
    sign(Algorithm::RS256, &EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA key"), kid, claims)
}

fn es256(pem: &str, kid: Option<&str>, claims: &Value) -> String {
    sign(Algorithm::ES256, &EncodingKey::from_ec_pem(pem.as_bytes()).expect("EC key"), kid, claims)
}

/// A JWKS document of (kid, algorithm, private key PEM) entries.
fn jwks(keys: &[(&str, Algorithm, &str)]) -> String {
    let keys = keys
        .iter()
        .map(|(kid, alg, pem)| {
            let key = match alg {
                Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
                _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
            }
            .expect("key");
            let mut jwk = Jwk::from_encoding_key(&key, *alg).expect("jwk");
            jwk.common.key_id = Some(kid.to_string());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).expect("jwks json")
}

/// A test config with auth on: the HS256 secret, plus whatever `set` adds.
fn auth_config(set: impl FnOnce(&mut Config)) -> Config {
    let mut config = common::config();
    config.auth.jwt_hs256_secret = Some(SECRET.into());
    set(&mut config);
    config
}

/// Joins with `token`, returning the refusal's status.
async fn try_join(server: &TestServer, join: pb::Join, token: Option<&str>) -> Result<Player, tonic::Status> {
    let connect = Connect { token: token.map(str::to_owned), ..Connect::default() };
    Player::try_join(server.addr, join, connect).await
}

/// Creates a relay session with an admin token.
async fn create(server: &TestServer, admin: &str, mode: &str) -> String {
    let request = pb::CreateSessionRequest { mode: mode.into(), max_players: 8, ..Default::default() };
    let response = server.sessions().await.create_session(bearer(request, admin)).await.expect("create");
    response.into_inner().session.expect("session").session_id
}

fn admin_token() -> String {
    jwt::admin("matchmaker")
}

/// Catches a key kind that does not verify, or a player id not taken from
/// `sub`: HS256, RS256 and ES256 (PEM) tokens each join as their subject.
#[tokio::test]
async fn hs256_rs256_and_es256_pem_tokens_join_as_their_subject() {
    let server = TestServer::start_with(auth_config(|config| {
        config.auth.jwt_public_key_file = vec![fixture("rsa-1.pub.pem"), fixture("ec-1.pub.pem")];
    }))
    .await;
    let session = create(&server, &admin_token(), "relay").await;
    for (sub, token) in [
        ("hs-player", hs256(&claims("hs-player"))),
        ("rs-player", rs256(RSA_1, None, &claims("rs-player"))),
        ("es-player", es256(EC_1, None, &claims("es-player"))),
    ] {
        // No player id in the join: the token names the player.
        let player = try_join(&server, join_session(&session, ""), Some(&token)).await.expect("join");
        assert_eq!(player.id(), sub);
    }
    // Naming one's own id is fine too.
    let token = hs256(&claims("named"));
    assert_eq!(try_join(&server, join_session(&session, "named"), Some(&token)).await.expect("join").id(), "named");
    server.shutdown().await;
}

/// Catches a JWKS file whose keys are not used, or used without their kid.
#[tokio::test]
async fn a_jwks_file_verifies_rs256_and_es256_tokens_by_key_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let document = jwks(&[("rsa-2", Algorithm::RS256, RSA_2), ("ec-1", Algorithm::ES256, EC_1)]);
    let path = certs::write(dir.path(), "jwks.json", &document);
    let server = TestServer::start_with(auth_config(|config| config.auth.jwks_file = Some(path))).await;
    let session = create(&server, &admin_token(), "relay").await;
    let rs = rs256(RSA_2, Some("rsa-2"), &claims("rs"));
    assert_eq!(try_join(&server, join_session(&session, ""), Some(&rs)).await.expect("join").id(), "rs");
    let es = es256(EC_1, Some("ec-1"), &claims("es"));
    assert_eq!(try_join(&server, join_session(&session, ""), Some(&es)).await.expect("join").id(), "es");
    // A key the JWKS holds under another kid is not tried for this one.
    let wrong_kid = rs256(RSA_2, Some("ec-1"), &claims("x"));
    assert_status(
        try_join(&server, join_session(&session, ""), Some(&wrong_kid)).await,
        Code::Unauthenticated,
        "algorithm",
    );
    server.shutdown().await;
}

/// A JWKS over HTTPS, from a test server with its own CA, counting fetches.
struct JwksServer {
    url: String,
    document: Arc<std::sync::Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(ca: &Ca, document: String) -> Self {
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let acceptor = ca.server().acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://127.0.0.1:{}/.well-known/jwks.json", listener.local_addr().expect("addr").port());
        let document = Arc::new(std::sync::Mutex::new(document));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (document.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (acceptor, served, counted) = (acceptor.clone(), served.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else { return };
                    let service = service_fn(move |_request| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let body = served.lock().expect("document").clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer { url, document, fetches, task }
    }

    fn serve(&self, document: String) {
        *self.document.lock().expect("document") = document;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Catches a JWKS URL that is not fetched over HTTPS with the configured CA,
/// a rotated key that is not picked up when a token names it, and unknown
/// key ids that make the server hammer the identity provider.
#[tokio::test]
async fn a_jwks_over_https_rotates_and_unknown_key_ids_refetch_at_most_once_per_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("identity provider CA");
    let ca_file = certs::write(dir.path(), "ca.pem", &ca.pem());
    let idp = JwksServer::start(&ca, jwks(&[("key-1", Algorithm::RS256, RSA_1)])).await;
    let mut config = common::config();
    config.auth.jwks_url = Some(idp.url.clone());
    config.auth.jwks_ca_file = Some(ca_file);
    // Long enough that no second refetch can happen within the test.
    config.auth.jwks_refetch_min_interval = std::time::Duration::from_secs(3600);
    let server = TestServer::start_with(config).await;
    let admin = rs256(RSA_1, Some("key-1"), &with(claims("ops"), json!({ "scope": "game-session:admin" })));
    let session = create(&server, &admin, "relay").await;
    assert_eq!(idp.fetches(), 1, "fetched once at start");
    let first = rs256(RSA_1, Some("key-1"), &claims("first"));
    assert_eq!(try_join(&server, join_session(&session, ""), Some(&first)).await.expect("join").id(), "first");
    assert_eq!(idp.fetches(), 1, "a known key needs no fetch");

    // The identity provider rotates to key-2: the first token naming it
    // makes the server fetch again, and it is accepted.
    idp.serve(jwks(&[("key-2", Algorithm::RS256, RSA_2)]));
    let rotated = rs256(RSA_2, Some("key-2"), &claims("rotated"));
    assert_eq!(try_join(&server, join_session(&session, ""), Some(&rotated)).await.expect("join").id(), "rotated");
    assert_eq!(idp.fetches(), 2);

    // Made-up key ids within the interval: refused, and no more fetches.
    for n in 0..20 {
        let forged = rs256(RSA_2, Some(&format!("made-up-{n}")), &claims("mallory"));
        assert_status(
            try_join(&server, join_session(&session, ""), Some(&forged)).await,
            Code::Unauthenticated,
            "key this server does not know",
        );
    }
    // key-1 was rotated out.
    let stale = rs256(RSA_1, Some("key-1"), &claims("stale"));
    assert_status(try_join(&server, join_session(&session, ""), Some(&stale)).await, Code::Unauthenticated, "kid");
    assert_eq!(idp.fetches(), 2);
    server.shutdown().await;
}

/// The bad tokens, each with the status and message it must get.
fn bad_tokens() -> Vec<(&'static str, Option<String>, Code, &'static str)> {
    // Valid but for what each case changes.
    let claims = |sub: &str| with(claims(sub), json!({ "iss": "https://idp.example", "aud": "game" }));
    let b64 = |json: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string());
    let forged =
        sign(Algorithm::HS256, &EncodingKey::from_secret(b"another-secret-another-secret-00"), None, &claims("eve"));
    let unsigned = format!("{}.{}.", b64(&json!({ "alg": "none", "typ": "JWT" })), b64(&claims("eve")));
    // HS/RS confusion: an HS256 token whose "secret" is the server's RSA
    // public key, which every client can read.
    let public_pem = std::fs::read(fixture("rsa-1.pub.pem")).expect("public key");
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(&public_pem), None, &claims("eve"));
    // The signature's first character changed: its first six bits differ.
    let signed = hs256(&claims("eve"));
    let (head, signature) = signed.rsplit_once('.').expect("a JWT");
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{head}.{flipped}{}", &signature[1..]);
    vec![
        ("no token", None, Code::Unauthenticated, "authorization: missing"),
        ("not a JWT", Some("hello".into()), Code::Unauthenticated, "not a readable JWT"),
        ("forged signature", Some(forged), Code::Unauthenticated, "signature does not verify"),
        ("tampered signature", Some(tampered), Code::Unauthenticated, "signature does not verify"),
        ("expired", Some(hs256(&with(claims("eve"), json!({ "exp": now() - 120 })))), Code::Unauthenticated, "expired"),
        (
            "not yet valid",
            Some(hs256(&with(claims("eve"), json!({ "nbf": now() + 600 })))),
            Code::Unauthenticated,
            "not valid yet",
        ),
        (
            "wrong issuer",
            Some(hs256(&with(claims("eve"), json!({ "iss": "https://evil.example", "aud": "game" })))),
            Code::Unauthenticated,
            "issuer",
        ),
        (
            "no issuer",
            Some(hs256(&json!({ "sub": "eve", "exp": now() + 3600, "aud": "game" }))),
            Code::Unauthenticated,
            "required claim",
        ),
        (
            "wrong audience",
            Some(hs256(&with(claims("eve"), json!({ "iss": "https://idp.example", "aud": "other" })))),
            Code::Unauthenticated,
            "audience",
        ),
        (
            "no exp",
            Some(hs256(&json!({ "sub": "eve", "iss": "https://idp.example", "aud": "game" }))),
            Code::Unauthenticated,
            "required claim",
        ),
        ("alg none", Some(unsigned), Code::Unauthenticated, "algorithm"),
        ("a sub that is no player id", Some(hs256(&claims("auth0|eve"))), Code::Unauthenticated, "not a player id"),
        ("HS256 signed with the RSA public key", Some(confused), Code::Unauthenticated, "signature does not verify"),
        (
            "ES256 with no EC key configured",
            Some(es256(EC_1, None, &claims("eve"))),
            Code::Unauthenticated,
            "algorithm",
        ),
    ]
}

/// Catches any bad token let in, refused with the wrong status, or a refusal
/// that disturbs others: each bad token is refused with its status while an
/// honest session alongside relays, and the honest players receive every
/// message they expect, in order, and nothing else.
#[tokio::test]
async fn bad_tokens_are_refused_with_their_status_and_an_honest_session_is_untouched() {
    let server = TestServer::start_with(auth_config(|config| {
        config.auth.jwt_public_key_file = vec![fixture("rsa-1.pub.pem")];
        config.auth.jwt_issuer = Some("https://idp.example".into());
        config.auth.jwt_audience = Some("game".into());
    }))
    .await;
    let valid = |sub: &str| hs256(&with(claims(sub), json!({ "iss": "https://idp.example", "aud": "game" })));
    let admin = hs256(&with(
        claims("ops"),
        json!({ "iss": "https://idp.example", "aud": "game", "scope": "game-session:admin" }),
    ));
    let session = create(&server, &admin, "relay").await;
    let mut alice = try_join(&server, join_session(&session, ""), Some(&valid("alice"))).await.expect("alice");
    let mut bob = try_join(&server, join_session(&session, ""), Some(&valid("bob"))).await.expect("bob");
    assert_eq!(alice.next_presence().await.player.expect("player").player_id, "bob");

    let mut sent = 0;
    for (case, token, code, needle) in bad_tokens() {
        let refused = try_join(&server, join_session(&session, "eve"), token.as_deref()).await;
        match refused {
            Ok(_) => panic!("{case}: let in"),
            Err(status) => {
                assert_eq!(status.code(), code, "{case}: {status:?}");
                assert!(status.message().contains(needle), "{case}: {:?} lacks {needle:?}", status.message());
                assert!(!status.message().contains("eve"), "{case}: the refusal echoes the token's claims");
            }
        }
        alice.relay(format!("a{sent}").as_bytes(), &[]).await;
        bob.relay(format!("b{sent}").as_bytes(), &[]).await;
        sent += 1;
    }
    for n in 0..sent {
        assert_eq!(bob.next_relayed().await.payload, format!("a{n}").into_bytes());
        assert_eq!(alice.next_relayed().await.payload, format!("b{n}").into_bytes());
    }
    let info = server.session_info_with(&session, &admin).await;
    let mut players: Vec<_> = info.players.iter().map(|p| p.player_id.as_str()).collect();
    players.sort();
    assert_eq!(players, ["alice", "bob"]);
    server.shutdown().await;
}

/// Catches a token holder joining as somebody else, or outside the sessions
/// and modes its claims allow.
#[tokio::test]
async fn a_token_cannot_impersonate_or_leave_its_sessions_and_modes() {
    let server = TestServer::start_with(auth_config(|_| {})).await;
    let admin = admin_token();
    let session = create(&server, &admin, "relay").await;
    let other = create(&server, &admin, "relay").await;

    let alice = hs256(&claims("alice"));
    assert_status(
        try_join(&server, join_session(&session, "bob"), Some(&alice)).await,
        Code::PermissionDenied,
        "another player",
    );

    let bound = hs256(&with(claims("carol"), json!({ "gs_sessions": [session.clone()] })));
    assert_status(
        try_join(&server, join_session(&other, ""), Some(&bound)).await,
        Code::PermissionDenied,
        "does not allow",
    );
    assert_status(
        try_join(&server, join_mode("relay", ""), Some(&bound)).await,
        Code::PermissionDenied,
        "does not allow",
    );
    assert_eq!(try_join(&server, join_session(&session, ""), Some(&bound)).await.expect("join").id(), "carol");

    let moded = hs256(&with(claims("dave"), json!({ "gs_modes": ["ranked"] })));
    assert_status(
        try_join(&server, join_session(&other, ""), Some(&moded)).await,
        Code::PermissionDenied,
        "does not allow",
    );
    assert_status(
        try_join(&server, join_mode("relay", ""), Some(&moded)).await,
        Code::PermissionDenied,
        "does not allow",
    );
    let relay_ok = hs256(&with(claims("erin"), json!({ "gs_modes": ["relay"] })));
    assert_eq!(try_join(&server, join_mode("relay", ""), Some(&relay_ok)).await.expect("join").id(), "erin");
    server.shutdown().await;
}

/// Catches an open admin API: SessionService without a credential, with a
/// player's token, and with an admin token or API key.
#[tokio::test]
async fn session_service_needs_an_admin_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = certs::write(dir.path(), "api-keys", "\nfirst-api-key-0123456789\nsecond-api-key-0123456789\n");
    let server = TestServer::start_with(auth_config(|config| config.auth.admin_api_key_file = Some(keys))).await;
    let mut sessions = server.sessions().await;
    let list = || pb::ListSessionsRequest::default();

    assert_status(sessions.list_sessions(list()).await, Code::Unauthenticated, "authorization: missing");
    let player = hs256(&claims("alice"));
    assert_status(sessions.list_sessions(bearer(list(), &player)).await, Code::PermissionDenied, "admin credential");
    let wrong_role = hs256(&with(claims("alice"), json!({ "scope": "game-session:admin-ish" })));
    assert_status(
        sessions.list_sessions(bearer(list(), &wrong_role)).await,
        Code::PermissionDenied,
        "admin credential",
    );
    assert_status(
        sessions.list_sessions(bearer(list(), "not-an-api-key-0123456789")).await,
        Code::Unauthenticated,
        "JWT",
    );
    assert_status(
        sessions
            .end_session(pb::EndSessionRequest { session_id: "x".into(), message: "pwned by anonymous".into() })
            .await,
        Code::Unauthenticated,
        "missing",
    );
    // The live-ops calls too: a player may not kick another or lock its session.
    let kick = pb::RemovePlayerRequest { session_id: "x".into(), player_id: "bob".into(), reason: String::new() };
    assert_status(sessions.remove_player(kick.clone()).await, Code::Unauthenticated, "missing");
    assert_status(sessions.remove_player(bearer(kick, &player)).await, Code::PermissionDenied, "admin credential");
    let lock = pb::LockSessionRequest { session_id: "x".into(), locked: true };
    assert_status(sessions.lock_session(lock.clone()).await, Code::Unauthenticated, "missing");
    assert_status(sessions.lock_session(bearer(lock, &player)).await, Code::PermissionDenied, "admin credential");

    let admin = admin_token();
    let session = create(&server, &admin, "relay").await;
    // A service account's sub need not be a player id.
    let service = hs256(&with(claims("svc|matchmaker@studio.example"), json!({ "scope": "game-session:admin" })));
    for credential in [admin.as_str(), &service, "first-api-key-0123456789", "second-api-key-0123456789"] {
        let listed = sessions.list_sessions(bearer(list(), credential)).await.expect("list").into_inner();
        assert_eq!(listed.sessions.len(), 1);
    }
    // An API key names no player.
    assert_status(
        try_join(&server, join_session(&session, "bot"), Some("first-api-key-0123456789")).await,
        Code::PermissionDenied,
        "names no player",
    );
    server.shutdown().await;
}

/// Catches algorithm confusion on a server with only an RSA key: an HS256
/// token "signed" with the RSA public key (which anyone can read) must not
/// be verified with that key as an HMAC secret.
#[tokio::test]
async fn an_hs256_token_is_never_verified_with_an_rsa_public_key() {
    let mut config = common::config();
    config.auth.jwt_public_key_file = vec![fixture("rsa-1.pub.pem")];
    let server = TestServer::start_with(config).await;
    let admin = rs256(RSA_1, None, &with(claims("ops"), json!({ "scope": "game-session:admin" })));
    let session = create(&server, &admin, "relay").await;
    let public_pem = std::fs::read(fixture("rsa-1.pub.pem")).expect("public key");
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(&public_pem), None, &claims("eve"));
    assert_status(
        try_join(&server, join_session(&session, ""), Some(&confused)).await,
        Code::Unauthenticated,
        "algorithm",
    );
    let honest = rs256(RSA_1, None, &claims("alice"));
    assert_eq!(try_join(&server, join_session(&session, ""), Some(&honest)).await.expect("join").id(), "alice");
    server.shutdown().await;
}

/// Catches an admin claim read only as a space-separated string: a `roles`
/// array, with the claim name configured, grants admin too.
#[tokio::test]
async fn the_admin_claim_can_be_a_configured_roles_array() {
    let server = TestServer::start_with(auth_config(|config| {
        config.auth.admin_claim = "roles".into();
        config.auth.admin_claim_value = "session-admin".into();
    }))
    .await;
    let mut sessions = server.sessions().await;
    let admin = hs256(&with(claims("lobby"), json!({ "roles": ["viewer", "session-admin"] })));
    sessions.list_sessions(bearer(pb::ListSessionsRequest::default(), &admin)).await.expect("list as admin");
    // The default claim no longer counts.
    let scoped = hs256(&with(claims("lobby"), json!({ "scope": "game-session:admin" })));
    assert_status(
        sessions.list_sessions(bearer(pb::ListSessionsRequest::default(), &scoped)).await,
        Code::PermissionDenied,
        "admin",
    );
    server.shutdown().await;
}

/// Catches a stream cut when its token expires: tokens are checked at join
/// only, as the README says.
#[tokio::test]
async fn an_open_stream_outlives_its_token() {
    let server = TestServer::start_with(auth_config(|config| config.auth.jwt_leeway = std::time::Duration::ZERO)).await;
    let session = create(&server, &admin_token(), "relay").await;
    let exp = now() + 2;
    let mut alice = try_join(&server, join_session(&session, ""), Some(&hs256(&json!({ "sub": "alice", "exp": exp }))))
        .await
        .expect("alice");
    let bob = try_join(&server, join_session(&session, ""), Some(&hs256(&claims("bob")))).await.expect("bob");
    alice.next_presence().await;
    // JWT times are wall-clock seconds: wait until the token has expired.
    while now() <= exp {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let expired = hs256(&json!({ "sub": "carol", "exp": exp }));
    assert_status(
        try_join(&server, join_session(&session, ""), Some(&expired)).await,
        Code::Unauthenticated,
        "expired",
    );
    bob.relay(b"still here", &[]).await;
    match alice.next().await {
        server_message::Kind::Relayed(relayed) => assert_eq!(relayed.payload, b"still here".to_vec()),
        other => panic!("expected the relay, got {other:?}"),
    }
    server.shutdown().await;
}

/// Catches a reconnecting player locked out of its own seat until
/// keepalive notices its dead connection (ALREADY_EXISTS for about 20 s),
/// a takeover that ends the old stream without a reason, that the others
/// see as a leave and a join, or that leaves two streams playing one seat;
/// and a seat taken over in a full or locked session being refused.
#[tokio::test]
async fn a_players_new_stream_takes_its_seat_over() {
    let server = TestServer::start_with(auth_config(|_| {})).await;
    let admin = admin_token();
    let request = pb::CreateSessionRequest { mode: "relay".into(), max_players: 2, ..Default::default() };
    let created = server.sessions().await.create_session(bearer(request, &admin)).await.expect("create");
    let session = created.into_inner().session.expect("session").session_id;
    let (alice, bob) = (hs256(&claims("alice")), hs256(&claims("bob")));
    let mut old = try_join(&server, join_session(&session, ""), Some(&alice)).await.expect("alice");
    let mut bob_player = try_join(&server, join_session(&session, ""), Some(&bob)).await.expect("bob");
    assert_eq!(old.next_presence().await.kind, PresenceKind::Joined as i32);
    let lock = pb::LockSessionRequest { session_id: session.clone(), locked: true };
    server.sessions().await.lock_session(bearer(lock, &admin)).await.expect("lock");

    // Full and locked: still alice's own seat to take.
    let mut new = try_join(&server, join_session(&session, ""), Some(&alice)).await.expect("the takeover");
    let present: Vec<&str> = new.welcome.players.iter().map(|p| p.player_id.as_str()).collect();
    assert_eq!((new.welcome.player.as_ref().map(|p| p.player_id.as_str()), present), (Some("alice"), vec!["bob"]));
    let (_, end) = tokio::time::timeout(WAIT, old.until_end()).await.expect("the old stream ends");
    assert_status(end, Code::Aborted, "taken over by a newer stream of the same player");
    let moved = bob_player.next_presence().await;
    assert_eq!(moved.kind, PresenceKind::Reconnected as i32, "{moved:?}");
    assert_eq!(moved.player.map(|p| p.player_id).as_deref(), Some("alice"));
    assert_eq!(moved.sequence, new.welcome.sequence);
    assert_eq!(server.session_info_with(&session, &admin).await.player_count, 2);

    bob_player.relay(b"to the new stream", &[]).await;
    assert_eq!(new.next_relayed().await.payload, &b"to the new stream"[..]);
    new.relay(b"from it", &[]).await;
    assert_eq!(bob_player.next_relayed().await.payload, &b"from it"[..]);
    server.shutdown().await;
}

/// Catches a resume token that takes a seat on its own with auth on: the
/// resume also needs the seat's player's bearer token (none is
/// UNAUTHENTICATED, bob's is PERMISSION_DENIED), and with alice's it
/// resumes.
#[tokio::test]
async fn with_auth_on_a_resume_needs_the_players_own_token() {
    let server = TestServer::start_with(auth_config(|_| {})).await;
    let session = create(&server, &admin_token(), "relay").await;
    let (alice, bob) = (hs256(&claims("alice")), hs256(&claims("bob")));
    let player = try_join(&server, join_session(&session, ""), Some(&alice)).await.expect("alice");
    let resume = pb::Resume { token: player.welcome.resume_token.clone(), last_sequence: player.welcome.sequence };
    player.break_connection();
    let without = Player::try_resume(server.addr, resume.clone(), Connect::default()).await;
    assert_status(without.map(|_| ()), Code::Unauthenticated, "");
    let as_bob = Player::try_resume(server.addr, resume.clone(), Connect::token(&bob)).await;
    assert_status(as_bob.map(|_| ()), Code::PermissionDenied, "another player");
    let (_, resumed) = Player::try_resume(server.addr, resume, Connect::token(&alice)).await.expect("resume");
    assert_eq!(resumed.player.map(|p| p.player_id).as_deref(), Some("alice"));
    server.shutdown().await;
}

/// Catches a reconnect that must wait for keepalive: alice's network goes
/// silent (no FIN, no reset), and her client joins again over a new
/// connection. With keepalive set to an hour, only the takeover lets her
/// back in; she gets everything sent after her new welcome, and the others
/// see her reconnect, not leave.
#[tokio::test]
async fn a_player_whose_network_went_silent_rejoins_at_once() {
    let server = TestServer::start_with(auth_config(|config| {
        config.keepalive_interval = std::time::Duration::from_secs(3600);
        config.keepalive_timeout = std::time::Duration::from_secs(3600);
    }))
    .await;
    let session = create(&server, &admin_token(), "relay").await;
    let proxy = common::proxy::Proxy::start(server.addr).await;
    let alice = hs256(&claims("alice"));
    let connect = Connect::token(&alice);
    let _gone = Player::try_join(proxy.addr, join_session(&session, ""), connect.clone()).await.expect("alice");
    let mut bob = try_join(&server, join_session(&session, ""), Some(&hs256(&claims("bob")))).await.expect("bob");

    proxy.cut_silently();
    bob.relay(b"while alice is away", &[]).await;
    let mut back = Player::try_join(server.addr, join_session(&session, ""), connect).await.expect("the rejoin");
    assert_eq!(back.welcome.players.iter().map(|p| p.player_id.as_str()).collect::<Vec<_>>(), ["bob"]);
    let reconnected = bob.next_presence().await;
    assert_eq!(reconnected.kind, PresenceKind::Reconnected as i32, "{reconnected:?}");
    bob.relay(b"welcome back", &[]).await;
    let relayed = back.next_relayed().await;
    assert_eq!((relayed.payload.as_ref(), relayed.sequence > back.welcome.sequence), (&b"welcome back"[..], true));
    drop(proxy); // closes the silent connection, which the drain would wait for
    server.shutdown().await;
}
