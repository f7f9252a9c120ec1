//! TLS configs for the tests: a self-signed certificate for `localhost`,
//! made in the test (rcgen), trusted by the client config.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A client and a server config that trust one self-signed certificate
/// for `localhost`, made here.
pub fn configs() -> (TlsConnector, TlsAcceptor) {
    configs_with(true)
}

/// [`configs`], with the server's TLS 1.3 session tickets on or off. The
/// tickets arrive after the handshake, unread by a client that only
/// writes: closing with them unread is what makes a kernel send a reset.
pub fn configs_with(tickets: bool) -> (TlsConnector, TlsAcceptor) {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert: CertificateDer<'static> = made.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()));
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    if !tickets {
        server.send_tls13_tickets = 0;
    }
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        TlsConnector::from(Arc::new(client)),
        TlsAcceptor::from(Arc::new(server)),
    )
}

pub fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}
