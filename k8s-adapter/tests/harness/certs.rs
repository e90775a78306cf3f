//! Certificates for the test control plane: a CA, kube-apiserver's serving certificate for
//! 127.0.0.1 and localhost, and the service-account signing key.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::HarnessError;

/// The files written.
pub struct Certs {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The serving certificate.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// The service-account signing key.
    pub service_account_key: PathBuf,
    /// Its public half.
    pub service_account_pub: PathBuf,
}

fn cert_err(e: rcgen::Error) -> HarnessError {
    HarnessError::Certs(e.to_string())
}

/// Generates and writes the certificates into `dir`.
pub fn generate(dir: &Path) -> Result<Certs, HarnessError> {
    std::fs::create_dir_all(dir).map_err(|e| HarnessError::io(dir, e))?;
    let ca_key = KeyPair::generate().map_err(cert_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "keel-test-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_err)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate().map_err(cert_err)?;
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_string(), "kubernetes".to_string()])
            .map_err(cert_err)?;
    server_params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    server_params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(cert_err)?;

    let sa_key = KeyPair::generate().map_err(cert_err)?;
    let certs = Certs {
        ca: dir.join("ca.crt"),
        server_cert: dir.join("apiserver.crt"),
        server_key: dir.join("apiserver.key"),
        service_account_key: dir.join("sa.key"),
        service_account_pub: dir.join("sa.pub"),
    };
    for (path, text) in [
        (&certs.ca, ca_cert.pem()),
        (&certs.server_cert, server_cert.pem()),
        (&certs.server_key, server_key.serialize_pem()),
        (&certs.service_account_key, sa_key.serialize_pem()),
        (&certs.service_account_pub, sa_key.public_key_pem()),
    ] {
        std::fs::write(path, text).map_err(|e| HarnessError::io(path, e))?;
    }
    Ok(certs)
}
