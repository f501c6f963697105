//! Certificates for a VCH: a CA, a server pair and a client pair signed by it (rcgen).

use anyhow::{Context, Result};
use chrono::{Datelike, Utc};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::io::Read;

pub struct Ca {
    cert: Certificate,
    key: KeyPair,
}

/// A PEM certificate and its PEM (PKCS#8) private key.
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

fn serial() -> Result<SerialNumber> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom for a certificate serial number")?;
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte
    Ok(SerialNumber::from(b.to_vec()))
}

/// Valid from yesterday (clock skew between hosts) for `days`.
fn validity(p: &mut CertificateParams, days: i64) {
    let from = Utc::now() - chrono::Duration::days(1);
    let to = Utc::now() + chrono::Duration::days(days);
    p.not_before = rcgen::date_time_ymd(from.year(), from.month() as u8, from.day() as u8);
    p.not_after = rcgen::date_time_ymd(to.year(), to.month() as u8, to.day() as u8);
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "KIC");
    d.push(DnType::CommonName, cn);
    d
}

impl Ca {
    pub fn generate(vch: &str) -> Result<Ca> {
        let key = KeyPair::generate().context("cannot generate the CA key")?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(&format!("KIC VCH {vch} CA"));
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.serial_number = Some(serial()?);
        validity(&mut p, 3650);
        let cert = p
            .self_signed(&key)
            .context("cannot sign the CA certificate")?;
        Ok(Ca { cert, key })
    }

    pub fn pair(&self) -> Pair {
        Pair {
            cert_pem: self.cert.pem(),
            key_pem: self.key.serialize_pem(),
        }
    }

    fn issue(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        eku: ExtendedKeyUsagePurpose,
        usages: Vec<KeyUsagePurpose>,
    ) -> Result<Pair> {
        let key = KeyPair::generate().context("cannot generate a key")?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(cn);
        p.subject_alt_names = sans;
        p.extended_key_usages = vec![eku];
        p.key_usages = usages;
        p.use_authority_key_identifier_extension = true;
        p.serial_number = Some(serial()?);
        validity(&mut p, 825);
        let cert = p
            .signed_by(&key, &self.cert, &self.key)
            .with_context(|| format!("cannot sign the certificate for {cn}"))?;
        Ok(Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate for these names (DNS names or IP addresses; duplicates dropped).
    pub fn server(&self, names: &[String]) -> Result<Pair> {
        let mut sans = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for n in names {
            if !seen.insert(n.to_ascii_lowercase()) {
                continue;
            }
            sans.push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    n.as_str()
                        .try_into()
                        .with_context(|| format!("{n:?} cannot be a certificate name"))?,
                ),
            });
        }
        let cn = names.first().map(String::as_str).unwrap_or("localhost");
        self.issue(
            cn,
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ],
        )
    }

    /// A client certificate (clientAuth) for the Docker CLI.
    pub fn client(&self, vch: &str) -> Result<Pair> {
        self.issue(
            &format!("KIC VCH {vch} client"),
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
            vec![KeyUsagePurpose::DigitalSignature],
        )
    }
}

/// Whether a file's text holds at least one PEM certificate.
pub fn looks_like_pem_cert(text: &str) -> bool {
    text.contains("-----BEGIN CERTIFICATE-----") && text.contains("-----END CERTIFICATE-----")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn openssl(args: &[&str]) -> (bool, String) {
        let o = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    #[test]
    fn chain_verifies_with_openssl() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n).to_string_lossy().into_owned();
        let ca = Ca::generate("t1").unwrap();
        let server = ca
            .server(&[
                "vch.example".into(),
                "localhost".into(),
                "127.0.0.1".into(),
                "LOCALHOST".into(),
            ])
            .unwrap();
        let client = ca.client("t1").unwrap();
        std::fs::write(p("ca.pem"), ca.pair().cert_pem).unwrap();
        std::fs::write(p("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(p("client.pem"), &client.cert_pem).unwrap();
        std::fs::write(p("server-key.pem"), &server.key_pem).unwrap();

        let (ok, out) = openssl(&[
            "verify",
            "-CAfile",
            &p("ca.pem"),
            "-purpose",
            "sslserver",
            &p("server.pem"),
        ]);
        assert!(ok, "{out}");
        let (ok, out) = openssl(&[
            "verify",
            "-CAfile",
            &p("ca.pem"),
            "-purpose",
            "sslclient",
            &p("client.pem"),
        ]);
        assert!(ok, "{out}");
        // The EKUs are not interchangeable.
        let (ok, _) = openssl(&[
            "verify",
            "-CAfile",
            &p("ca.pem"),
            "-purpose",
            "sslclient",
            &p("server.pem"),
        ]);
        assert!(
            !ok,
            "a server certificate must not pass as a client certificate"
        );
        let (ok, _) = openssl(&[
            "verify",
            "-CAfile",
            &p("ca.pem"),
            "-purpose",
            "sslserver",
            &p("client.pem"),
        ]);
        assert!(
            !ok,
            "a client certificate must not pass as a server certificate"
        );
        // Names and addresses the server answers to.
        let (ok, out) = openssl(&[
            "x509",
            "-in",
            &p("server.pem"),
            "-noout",
            "-ext",
            "subjectAltName",
        ]);
        assert!(ok, "{out}");
        assert!(out.contains("DNS:vch.example"), "{out}");
        assert!(out.contains("DNS:localhost"), "{out}");
        assert!(out.contains("IP Address:127.0.0.1"), "{out}");
        assert_eq!(out.matches("localhost").count(), 1, "{out}");
        // The key matches the certificate.
        let (_, a) = openssl(&["x509", "-in", &p("server.pem"), "-noout", "-pubkey"]);
        let (_, b) = openssl(&["pkey", "-in", &p("server-key.pem"), "-pubout"]);
        assert_eq!(a, b);
        // Another CA does not vouch for it.
        let other = Ca::generate("t2").unwrap();
        std::fs::write(p("other.pem"), other.pair().cert_pem).unwrap();
        let (ok, _) = openssl(&["verify", "-CAfile", &p("other.pem"), &p("server.pem")]);
        assert!(!ok);
    }

    #[test]
    fn bad_names_are_refused() {
        let ca = Ca::generate("t").unwrap();
        assert!(ca.server(&["bad name\u{7f}é".into()]).is_err());
    }
}
