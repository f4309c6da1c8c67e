//! Certificates made at test time: a certificate authority of the test's own and the server and
//! client certificates it signs, written as PEM files for servers and clients that take paths.
//! Nothing is checked in, so no certificate ever expires under the test suite.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key (PKCS#8), readable by its owner only, as servers demand.
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA whose certificate's common name is `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key pair"))
            .expect("self-signed CA certificate");
        Self { issuer }
    }

    /// Writes the CA's certificate (what clients and servers trust) to `path`.
    pub fn write_cert(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.issuer.as_ref().pem()).expect("write CA certificate");
        path.to_owned()
    }

    /// A server certificate for `hosts` (DNS names or IP addresses), written to
    /// `dir/<stem>.crt` and `dir/<stem>.key`.
    pub fn server(&self, hosts: &[&str], dir: &Path, stem: &str) -> CertFiles {
        let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("valid host names");
        params.distinguished_name.push(DnType::CommonName, hosts[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, dir, stem)
    }

    /// A client certificate whose common name is `user` (PostgreSQL's `cert` authentication
    /// maps it to the database user of that name), written to `dir/<stem>.crt` and `.key`.
    pub fn client(&self, user: &str, dir: &Path, stem: &str) -> CertFiles {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, dir, stem)
    }

    fn issue(&self, mut params: CertificateParams, dir: &Path, stem: &str) -> CertFiles {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("key pair");
        let cert = params.signed_by(&key, &self.issuer).expect("signed certificate");
        let files = CertFiles { cert: dir.join(format!("{stem}.crt")), key: dir.join(format!("{stem}.key")) };
        std::fs::write(&files.cert, cert.pem()).expect("write certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write private key");
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        files
    }
}
