//! TLS against the real server over TCP, with certificates made for each
//! test: both gRPC addresses over TLS, mutual TLS on the backend address, a
//! certificate rotated on disk and served without a restart, the
//! plain-text health address that probes use meanwhile, and the first
//! request's deadline after a handshake.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::certs::{self, Ca, Leaf, Usage};
use common::{Connect, Player, TestServer, WAIT, join_session};
use game_session::Config;
use game_session::pb::{self, session_service_client::SessionServiceClient};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A test config serving TLS with `leaf` (written into `dir`), a backend
/// address and a health address.
fn tls_config(dir: &Path, leaf: &Leaf) -> Config {
    let mut config = common::config();
    config.tls.tls_cert_file = Some(certs::write(dir, "tls.crt", &leaf.cert_pem));
    config.tls.tls_key_file = Some(certs::write(dir, "tls.key", &leaf.key_pem));
    config.backend_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.health_listen = game_session::config::MaybeAddr(Some(SocketAddr::from(([127, 0, 0, 1], 0))));
    config
}

/// Client TLS trusting `ca`, with `identity` for mutual TLS.
fn client_tls(ca: &Ca, identity: Option<&Leaf>) -> ClientTlsConfig {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem())).domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem));
    }
    tls
}

async fn channel(addr: SocketAddr, tls: Option<ClientTlsConfig>) -> Result<Channel, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?.connect_timeout(WAIT).timeout(WAIT);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    endpoint.connect().await
}

/// ListSessions over `tls` on `addr`: its session count, or why it failed.
async fn list(addr: SocketAddr, tls: Option<ClientTlsConfig>) -> Result<usize, String> {
    let channel = channel(addr, tls).await.map_err(|e| format!("connect: {e:?}"))?;
    let response = SessionServiceClient::new(channel).list_sessions(pb::ListSessionsRequest::default()).await;
    response.map(|r| r.into_inner().sessions.len()).map_err(|status| format!("{status:?}"))
}

/// The health status of `service` over plain text.
async fn health(addr: SocketAddr, service: &str) -> ServingStatus {
    let channel = channel(addr, None).await.expect("connect to the health address");
    let request = tonic_health::pb::HealthCheckRequest { service: service.into() };
    let response = HealthClient::new(channel).check(request).await.expect("health check").into_inner();
    ServingStatus::try_from(response.status).expect("a status")
}

/// The certificate `addr` presents in a fresh handshake, trusting `ca`.
async fn served_certificate(addr: SocketAddr, ca: &Ca) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).expect("CA")).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(game_session::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp)).await.expect("in time").expect("handshake");
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone().into_owned()
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("certificate")
}

/// Catches a TLS setting that does not reach both gRPC addresses, a server
/// that still speaks plain text, a client that trusts any certificate, or
/// a health address that needs TLS: players relay over TLS, the backend
/// answers over TLS, plain text and an unknown CA fail, and the plain-text
/// health address answers.
#[tokio::test]
async fn both_grpc_addresses_serve_tls_and_health_stays_plain_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test CA");
    let server = TestServer::start_with(tls_config(dir.path(), &ca.server())).await;
    let backend = server.backend_addr.expect("backend");

    assert_eq!(list(backend, Some(client_tls(&ca, None))).await, Ok(0));
    let created = SessionServiceClient::new(channel(backend, Some(client_tls(&ca, None))).await.expect("connect"))
        .create_session(pb::CreateSessionRequest { mode: "relay".into(), ..Default::default() })
        .await
        .expect("create over TLS");
    let session = created.into_inner().session.expect("session").session_id;
    let over_tls = || Connect { tls: Some(client_tls(&ca, None)), ..Connect::default() };
    let alice = Player::try_join(server.addr, join_session(&session, "alice"), over_tls()).await.expect("alice");
    let mut bob = Player::try_join(server.addr, join_session(&session, "bob"), over_tls()).await.expect("bob");
    alice.relay(b"over tls", &[]).await;
    assert_eq!(bob.next_relayed().await.payload, b"over tls".to_vec());

    assert!(list(backend, None).await.is_err(), "plain text against a TLS address");
    let stranger = Ca::new("another CA");
    let refused = list(backend, Some(client_tls(&stranger, None))).await;
    assert!(refused.is_err(), "a certificate from an untrusted CA was accepted");

    let health_addr = server.health_addr.expect("health");
    assert_eq!(health(health_addr, "").await, ServingStatus::Serving);
    assert_eq!(health(health_addr, "liveness").await, ServingStatus::Serving);
    assert_eq!(health(health_addr, "gamesession.v1.PlayerService").await, ServingStatus::Serving);
    // The health address serves health alone.
    let plain = channel(health_addr, None).await.expect("connect");
    let status = SessionServiceClient::new(plain).list_sessions(pb::ListSessionsRequest::default()).await;
    assert_eq!(status.expect_err("not served there").code(), tonic::Code::Unimplemented);
    server.shutdown().await;
}

/// Catches mutual TLS that is not enforced on the backend address, or that
/// leaks to the player address: the backend refuses clients without a
/// certificate or with one from another CA, and takes one from the client
/// CA; players need none.
#[tokio::test]
async fn the_backend_address_requires_a_client_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let mut config = tls_config(dir.path(), &ca.server());
    config.tls.tls_client_ca_file = Some(certs::write(dir.path(), "client-ca.crt", &clients.pem()));
    let server = TestServer::start_with(config).await;
    let backend = server.backend_addr.expect("backend");

    let matchmaker = clients.leaf("matchmaker", &["matchmaker"], Usage::Client);
    assert_eq!(list(backend, Some(client_tls(&ca, Some(&matchmaker)))).await, Ok(0));
    assert!(list(backend, Some(client_tls(&ca, None))).await.is_err(), "no client certificate");
    let impostor = Ca::new("impostor CA").leaf("matchmaker", &["matchmaker"], Usage::Client);
    assert!(list(backend, Some(client_tls(&ca, Some(&impostor)))).await.is_err(), "a client certificate of another CA");

    let create = pb::CreateSessionRequest { mode: "relay".into(), ..Default::default() };
    let channel = channel(backend, Some(client_tls(&ca, Some(&matchmaker)))).await.expect("connect");
    let session = SessionServiceClient::new(channel).create_session(create).await.expect("create");
    let session = session.into_inner().session.expect("session").session_id;
    let player = Connect { tls: Some(client_tls(&ca, None)), ..Connect::default() };
    let joined = Player::try_join(server.addr, join_session(&session, "alice"), player)
        .await
        .expect("a player needs no certificate");
    assert_eq!(joined.id(), "alice");
    server.shutdown().await;
}

/// Catches certificates read only at start: a certificate replaced on disk
/// is served to new connections within the reload interval, connections
/// made before go on, and a half-written pair (new certificate, old key) is
/// not served.
#[tokio::test]
async fn a_certificate_rotated_on_disk_is_served_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test CA");
    let first = ca.server();
    let mut config = tls_config(dir.path(), &first);
    config.tls.tls_reload_interval = Duration::from_millis(50);
    let server = TestServer::start_with(config).await;
    let backend = server.backend_addr.expect("backend");
    assert_eq!(served_certificate(server.addr, &ca).await, der(&first.cert_pem));
    let before = channel(backend, Some(client_tls(&ca, None))).await.expect("connect before the rotation");

    // The certificate first, the key a moment later: in between, the pair
    // does not match and the first certificate stays served.
    let second = ca.server();
    certs::write(dir.path(), "tls.crt", &second.cert_pem);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served_certificate(server.addr, &ca).await, der(&first.cert_pem), "a mismatched pair was served");
    certs::write(dir.path(), "tls.key", &second.key_pem);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let served = served_certificate(backend, &ca).await;
        if served == der(&second.cert_pem) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new certificate was not served in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served_certificate(server.addr, &ca).await, der(&second.cert_pem));
    let response = SessionServiceClient::new(before).list_sessions(pb::ListSessionsRequest::default()).await;
    assert_eq!(response.expect("the earlier connection goes on").into_inner().sessions.len(), 0);
    server.shutdown().await;
}

/// Catches the first request's deadline being lost on the TLS path (where
/// the handshake runs in a task of its own): a client that completes the
/// handshake and then sends nothing is closed, while players relay over TLS.
#[tokio::test]
async fn a_tls_connection_that_sends_no_request_is_closed_by_the_deadline() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test CA");
    let mut config = tls_config(dir.path(), &ca.server());
    config.backend_listen = None;
    config.first_request_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;
    let created = SessionServiceClient::new(channel(server.addr, Some(client_tls(&ca, None))).await.expect("connect"))
        .create_session(pb::CreateSessionRequest { mode: "relay".into(), ..Default::default() })
        .await
        .expect("create over TLS");
    let session = created.into_inner().session.expect("session").session_id;
    let over_tls = || Connect { tls: Some(client_tls(&ca, None)), ..Connect::default() };
    let alice = Player::try_join(server.addr, join_session(&session, "alice"), over_tls()).await.expect("alice");
    let mut bob = Player::try_join(server.addr, join_session(&session, "bob"), over_tls()).await.expect("bob");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).expect("CA")).expect("root");
    let mut client = rustls::ClientConfig::builder_with_provider(game_session::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut silent =
        tokio::time::timeout(WAIT, connector.connect(name, tcp)).await.expect("in time").expect("handshake");
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a TLS connection without a request was held");
    for round in 0..10u8 {
        alice.relay(&[round], &[]).await;
        assert_eq!(bob.next_relayed().await.payload, vec![round]);
    }
    server.shutdown().await;
}
