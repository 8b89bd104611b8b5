//! What a `rustls::Error` says about the upstream (feature `rustls`).

use crate::kind::ProxyErrorKind;

/// The kind of a TLS failure, and the alert the upstream sent, if it sent one.
///
/// - The upstream's certificate was not accepted, for whatever reason (expired, not yet valid,
///   unknown issuer, another name, revoked, a bad signature, an unsupported algorithm, an
///   unreadable encoding): `tls_certificate_error`.
/// - The upstream ended the handshake or the connection with a fatal alert (it wants a client
///   certificate, it shares no protocol version, cipher or ALPN protocol with the gateway, it
///   rejected the gateway's certificate): `tls_alert_received`, with the alert.
/// - Anything else (what arrived was no TLS, such as a plain-HTTP server's answer to a
///   ClientHello; a peer that broke the protocol or is incompatible): `tls_protocol_error`.
pub(super) fn recognise(error: &rustls::Error) -> (ProxyErrorKind, Option<u8>) {
    match error {
        rustls::Error::InvalidCertificate(_) => (ProxyErrorKind::TlsCertificateError, None),
        rustls::Error::AlertReceived(alert) => {
            (ProxyErrorKind::TlsAlertReceived, Some(u8::from(*alert)))
        }
        _ => (ProxyErrorKind::TlsProtocolError, None),
    }
}

#[cfg(test)]
mod tests {
    use rustls::{AlertDescription, CertificateError, Error, InvalidMessage};

    use super::*;

    #[test]
    fn each_tls_failure_has_its_kind() {
        for certificate in [
            CertificateError::Expired,
            CertificateError::NotValidYet,
            CertificateError::UnknownIssuer,
            CertificateError::NotValidForName,
            CertificateError::Revoked,
            CertificateError::BadSignature,
        ] {
            let error = Error::InvalidCertificate(certificate);
            assert_eq!(
                recognise(&error),
                (ProxyErrorKind::TlsCertificateError, None)
            );
        }
        let alert = Error::AlertReceived(AlertDescription::CertificateRequired);
        assert_eq!(
            recognise(&alert),
            (ProxyErrorKind::TlsAlertReceived, Some(116))
        );
        let garbage = Error::InvalidMessage(InvalidMessage::InvalidContentType);
        assert_eq!(
            recognise(&garbage),
            (ProxyErrorKind::TlsProtocolError, None)
        );
    }
}
