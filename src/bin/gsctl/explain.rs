//! What went wrong, in one line: the error's `source()` chain is walked for a
//! cause people meet often (nothing listening, a host name that does not
//! resolve, TLS on one side only, a certificate this client does not trust,
//! a missing or insufficient credential), which is then named with what to
//! do about it. Anything else prints as its chain, joined with `: `.

use std::error::Error as StdError;
use std::io::ErrorKind;

use rustls::{AlertDescription, CertificateError};
use tonic::{Code, Status};

/// Who failed, for the message.
#[derive(Clone, Copy)]
pub enum Context<'a> {
    /// A command talking to this address (`http://` or `https://`).
    Remote(&'a str),
    /// `gsctl bench`, which may talk to servers it starts.
    Bench,
}

/// The line printed after `error: `.
pub fn explain(err: &(dyn StdError + 'static), context: Context<'_>) -> String {
    let chain = chain(err);
    let uri = match context {
        Context::Remote(uri) => Some(uri),
        Context::Bench => None,
    };
    let tls = uri.is_some_and(|uri| uri.starts_with("https://"));
    let reach = |cause: String| match uri {
        Some(uri) => format!("cannot reach {uri}: {cause}"),
        None => format!("cannot reach the server: {cause}"),
    };
    if let Some(cause) = chain.iter().find_map(|e| tls_cause(*e)) {
        return reach(cause);
    }
    if let Some(cause) = chain.iter().find_map(|e| connect_cause(*e, &chain, tls)) {
        return reach(cause);
    }
    if let Some(status) = chain.iter().find_map(|e| e.downcast_ref::<Status>()) {
        return status_line(status, context);
    }
    joined(&chain)
}

/// The error and its causes, outermost first. An `io::Error` wrapping
/// another error is followed by that error: its own `source()` skips it.
fn chain<'a>(err: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut chain = Vec::new();
    let mut next = Some(err);
    while let Some(err) = next {
        chain.push(err);
        next = match err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    chain
}

/// The chain's messages joined with `: `, leaving out a message that only
/// repeats what follows it.
fn joined(chain: &[&(dyn StdError + 'static)]) -> String {
    let messages: Vec<String> = chain.iter().map(|e| e.to_string()).collect();
    let mut kept: Vec<&str> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let repeated = messages.get(i + 1).is_some_and(|next| message.ends_with(next.as_str()));
        if !repeated && !message.is_empty() {
            kept.push(message);
        }
    }
    kept.join(": ")
}

/// A TLS failure, named, with what to pass.
fn tls_cause(err: &(dyn StdError + 'static)) -> Option<String> {
    // An alert that arrives once the connection is up reaches us through h2,
    // which keeps only the error's message.
    if let Some(alert) = err.to_string().strip_prefix("received fatal alert: ") {
        return Some(alert_cause(alert));
    }
    let err = err.downcast_ref::<rustls::Error>()?;
    let cause = match err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "TLS: the server's certificate is not signed by a CA this client trusts (unknown issuer); \
             pass the CA's certificate with --ca-file"
                .to_owned()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "TLS: the server's certificate is not for this host name; pass the name it is for with \
              --tls-server-name"
            .to_owned(),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => format!("TLS: the server's certificate is outside its validity period ({err})"),
        rustls::Error::InvalidCertificate(_) => format!("TLS: the server's certificate was refused ({err})"),
        // Bytes that are not TLS records: a plain-text server answering.
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "TLS: the server does not speak TLS on this port; use an http:// address (or host:port without \
             TLS flags)"
                .to_owned()
        }
        rustls::Error::AlertReceived(alert) => alert_cause(&format!("{alert:?}")),
        other => format!("TLS: {other}"),
    };
    Some(cause)
}

/// A fatal alert from the server, by its name (`AlertDescription`'s Debug).
fn alert_cause(alert: &str) -> String {
    let is = |description: AlertDescription| alert == format!("{description:?}");
    if is(AlertDescription::CertificateRequired) {
        "TLS: the server asks for a client certificate (mutual TLS); pass --cert-file and --key-file".to_owned()
    } else if [AlertDescription::UnknownCA, AlertDescription::BadCertificate, AlertDescription::DecryptError]
        .into_iter()
        .any(is)
    {
        format!("TLS: the server refused this client's certificate ({alert}); check --cert-file and --key-file")
    } else {
        format!("TLS: the server ended the connection with the alert {alert}")
    }
}

/// A failure to connect: refused, unresolvable, unreachable, timed out, or
/// a plain-text connection that the server closed or did not answer in
/// HTTP/2.
fn connect_cause(err: &(dyn StdError + 'static), chain: &[&(dyn StdError + 'static)], tls: bool) -> Option<String> {
    let last = chain.last().map(|e| e.to_string()).unwrap_or_default();
    // hyper-util's connector says "dns error"; the resolver's message ends the chain.
    if err.to_string() == "dns error" {
        return Some(format!("cannot resolve the host name ({last}); check --addr"));
    }
    if err.is::<tonic::TimeoutExpired>() {
        return Some("no answer within --timeout".to_owned());
    }
    // A TLS server reads a plain-text client's HTTP/2 preface as a broken
    // handshake: it closes the connection, or first sends an alert, whose
    // bytes h2 reads as a frame header of an impossible size.
    let not_http2 = "the server did not answer in plain-text HTTP/2 (it closed the connection, or sent \
                     something else); if it serves TLS, use an https:// address or a TLS flag (--tls, --ca-file)";
    if !tls && err.to_string().ends_with("frame with invalid size") {
        return Some(not_http2.to_owned());
    }
    // Over TLS, the connection closed under the first call and no alert
    // arrived to say why: a server that refuses the client's certificate
    // closes so, and its alert may be lost with the connection.
    let closed = if tls {
        "the server closed the connection after the TLS handshake; if it checks client certificates (mutual \
         TLS), pass --cert-file and --key-file, signed by a CA it trusts"
    } else {
        not_http2
    };
    if err.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled) && last == "connection closed" {
        return Some(closed.to_owned());
    }
    let kind = err.downcast_ref::<std::io::Error>()?.kind();
    match kind {
        ErrorKind::ConnectionRefused => {
            Some("connection refused: nothing listens on that port (is the server running? is --addr right?)".into())
        }
        ErrorKind::NetworkUnreachable | ErrorKind::HostUnreachable => Some(format!("{last}; is --addr right?")),
        ErrorKind::TimedOut => Some("the connection timed out (is --addr right? is a firewall in the way?)".into()),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof => Some(closed.to_owned()),
        _ => None,
    }
}

/// A gRPC status as `CODE: message`, with a hint for the auth codes.
fn status_line(status: &Status, context: Context<'_>) -> String {
    let hint = match (status.code(), context) {
        (Code::Unauthenticated | Code::PermissionDenied, Context::Bench) => {
            "; against a server with auth on, give bench its HS256 secret (--secret-file) to mint a token per \
             player and an admin token, or --token with an admin credential for SessionService calls"
        }
        (Code::Unauthenticated, _) => {
            "; pass a token with --token (or GSCTL_TOKEN): `gsctl token --sub ID` mints one for development \
             (add --admin for SessionService commands)"
        }
        (Code::PermissionDenied, _) => {
            "; the credential is valid but not allowed this: SessionService commands need an admin token \
             (`gsctl token --admin`) or an admin API key, and play joins as its token's sub"
        }
        _ => "",
    };
    format!("{}: {}{hint}", code_name(status.code()), status.message())
}

/// A code's canonical name, as the gRPC spec writes it: `NOT_FOUND`.
pub fn code_name(code: Code) -> String {
    let camel = format!("{code:?}");
    let mut name = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}
