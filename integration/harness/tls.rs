//! A throwaway certificate authority: server certificates for HTTPS registries, client
//! certificates for mTLS, and the token server's signing certificate.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::run_dir;

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its PKCS#8 private key (PEM).
    pub key: PathBuf,
}

impl CertFiles {
    /// Certificate and key in one PEM buffer, as `reqwest::Identity::from_pem` takes them.
    pub fn identity_pem(&self) -> Vec<u8> {
        let mut pem = fs::read(&self.cert).expect("read certificate");
        pem.extend(fs::read(&self.key).expect("read key"));
        pem
    }
}

/// A CA made for one test, its files in a directory removed when it is dropped.
///
/// Every certificate is ECDSA P-256, valid from 1975 to 4096 (rcgen's defaults), so no
/// test can fail on a clock.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl TestCa {
    /// Generates the CA and writes its certificate to [`TestCa::ca_file`].
    pub fn new() -> TestCa {
        let parent = run_dir();
        fs::create_dir_all(&parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        let dir = tempfile::Builder::new()
            .prefix("ca-")
            .tempdir_in(&parent)
            .expect("create the CA directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "ctrpull test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate the CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign the CA");
        fs::write(dir.path().join("ca.pem"), issuer.pem()).expect("write ca.pem");
        TestCa { issuer, dir }
    }

    /// The CA certificate (PEM): what `ca`, `ca_file`, `clientcas` and `rootcertbundle`
    /// point at.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The CA certificate as PEM text.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The directory holding the CA's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate for `127.0.0.1` and `localhost`, written as `<name>.crt`
    /// and `<name>.key`.
    pub fn server_cert(&self, name: &str) -> CertFiles {
        self.issue(
            name,
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate (CN `name`) for mTLS.
    pub fn client_cert(&self, name: &str) -> CertFiles {
        self.issue(name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A certificate for signing JWTs, its DER (for a JWS `x5c` header) and its key.
    pub fn signing_cert(&self, name: &str) -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate().expect("generate a signing key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("signing params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the signing certificate");
        (cert.der().to_vec(), key)
    }

    fn issue(&self, name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose) -> CertFiles {
        let key = KeyPair::generate().expect("generate a key");
        let mut params = CertificateParams::new(sans).expect("certificate params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the certificate");
        let files = CertFiles {
            cert: self.dir.path().join(format!("{name}.crt")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        fs::write(&files.cert, cert.pem()).expect("write the certificate");
        fs::write(&files.key, key.serialize_pem()).expect("write the key");
        files
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
