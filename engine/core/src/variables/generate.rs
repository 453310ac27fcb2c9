//! Generation of variable values by type, the way bosh-cli generates them for a vars store:
//! `password`, `rsa`, `ssh` and `certificate` (root CAs, intermediate CAs and leaves).
//!
//! This module owns the value shapes (which keys a generated map has and in which format each
//! value is written) and the validation of a definition's `options`. It does no IO: the caller
//! interpolates the options, looks up the CA variable a certificate names, and stores the result.
//!
//! All cryptography, including randomness, comes from OpenSSL through the `openssl` crate.
//! Private keys are written as PKCS#1 `RSA PRIVATE KEY` PEM, as bosh-cli writes them, so that
//! stores stay interchangeable with `bosh int --vars-store`. Error messages never contain key
//! material, nor any part of a CA variable's value.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Time, Asn1Type};
use openssl::bn::{BigNum, BigNumRef, MsbOption};
use openssl::error::ErrorStack;
use openssl::hash::{MessageDigest, hash};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Builder, X509Name, X509NameBuilder};

use crate::yaml::{Map, Node, Span, Value};

/// The characters of a generated password (bosh-cli: lowercase letters and digits).
const PASSWORD_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// The largest multiple of the alphabet size that fits in a byte: bytes at or above it are
/// rejected so that every character is exactly equally likely (no modulo bias).
const PASSWORD_BYTE_LIMIT: u8 = 252;
/// bosh-cli's default password length.
const DEFAULT_PASSWORD_LENGTH: i64 = 20;
/// An upper bound on `options.length`, so that a typo cannot allocate gigabytes.
const MAX_PASSWORD_LENGTH: i64 = 4096;
/// Key size of `rsa` and `ssh` keys (bosh-cli).
const RSA_KEY_BITS: u32 = 2048;
/// Key size of certificate keys, CAs and leaves alike (bosh-cli).
const CERTIFICATE_KEY_BITS: u32 = 3072;
/// bosh-cli's default subject organization.
const DEFAULT_ORGANIZATION: &str = "Cloud Foundry";
/// bosh-cli writes this fixed subject country. It is three letters where X.509 asks for two;
/// bosh-cli (Go) does not check that, and neither do TLS clients, so it is kept for parity.
const COUNTRY: &str = "USA";
/// bosh-cli's default certificate lifetime, in days.
const DEFAULT_DURATION_DAYS: i64 = 365;
const SECONDS_PER_DAY: i64 = 86_400;
/// 9999-12-31T23:59:59Z, the last time X.509 can express (RFC 5280 §4.1.2.5). OpenSSL
/// would write a five-digit year past it, which no parser accepts.
const LAST_X509_TIME: i64 = 253_402_300_799;

/// Sets one bit of a key usage extension (a `KeyUsage` builder method).
type SetKeyUsage = fn(&mut KeyUsage) -> &mut KeyUsage;
/// Adds one purpose to an extended key usage extension (an `ExtendedKeyUsage` method).
type AddExtendedKeyUsage = fn(&mut ExtendedKeyUsage) -> &mut ExtendedKeyUsage;

/// The accepted `options.key_usage` names and the extension bit each one sets.
const KEY_USAGES: [(&str, SetKeyUsage); 9] = [
    ("digital_signature", KeyUsage::digital_signature),
    ("non_repudiation", KeyUsage::non_repudiation),
    ("key_encipherment", KeyUsage::key_encipherment),
    ("data_encipherment", KeyUsage::data_encipherment),
    ("key_agreement", KeyUsage::key_agreement),
    ("key_cert_sign", KeyUsage::key_cert_sign),
    ("crl_sign", KeyUsage::crl_sign),
    ("encipher_only", KeyUsage::encipher_only),
    ("decipher_only", KeyUsage::decipher_only),
];

/// The accepted `options.extended_key_usage` names and the purpose each one adds.
const EXTENDED_KEY_USAGES: [(&str, AddExtendedKeyUsage); 5] = [
    ("server_auth", ExtendedKeyUsage::server_auth),
    ("client_auth", ExtendedKeyUsage::client_auth),
    ("code_signing", ExtendedKeyUsage::code_signing),
    ("email_protection", ExtendedKeyUsage::email_protection),
    ("timestamping", ExtendedKeyUsage::time_stamping),
];

/// Generates a value for a variable of type `kind` with (interpolated) `options`; `ca` is
/// the value of the CA variable a certificate names in `options.ca`.
///
/// Every node of the result has the span `generated <name>`. Errors are one lowercase line
/// saying what was expected and what was found.
pub fn generate(
    name: &str,
    kind: &str,
    options: Option<&Node>,
    ca: Option<&Node>,
) -> Result<Node, String> {
    // The type is checked first: options of a type we cannot generate are meaningless.
    if !matches!(kind, "password" | "certificate" | "rsa" | "ssh") {
        return Err(format!(
            "cannot generate variables of type '{kind}' (expected password, certificate, rsa or ssh)"
        ));
    }
    let options = Options::new(options)?;
    let span = Span::synthetic(&format!("generated {name}"));
    match kind {
        "password" => {
            let length = options
                .positive_int("length", Some(MAX_PASSWORD_LENGTH))?
                .unwrap_or(DEFAULT_PASSWORD_LENGTH);
            Ok(Node::string(password(length)?, span))
        }
        "rsa" => rsa_key(&span),
        "ssh" => ssh_key(&span),
        _ => certificate(&options, ca, &span),
    }
}

/// A definition's `options`, with typed accessors whose errors name `options.<key>`.
///
/// A key whose value is `null` counts as absent (go-yaml leaves such fields at their zero
/// value, which for every option here is the default). Unknown keys are ignored, as bosh-cli
/// ignores them.
struct Options<'a> {
    map: Option<&'a Map>,
}

impl<'a> Options<'a> {
    fn new(options: Option<&'a Node>) -> Result<Options<'a>, String> {
        match options {
            None => Ok(Options { map: None }),
            Some(node) => match &node.value {
                Value::Null => Ok(Options { map: None }),
                Value::Map(map) => Ok(Options { map: Some(map) }),
                _ => Err(format!(
                    "options: expected a map, found {}",
                    node.describe()
                )),
            },
        }
    }

    fn get(&self, key: &str) -> Option<&'a Node> {
        self.map?.get(key).filter(|node| !node.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(node) => node.as_str().map(Some).ok_or_else(|| {
                format!(
                    "options.{key}: expected a string, found {}",
                    node.describe()
                )
            }),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(node) => match node.value {
                Value::Bool(b) => Ok(Some(b)),
                _ => Err(format!(
                    "options.{key}: expected a boolean, found {}",
                    node.describe()
                )),
            },
        }
    }

    /// An integer in `1..=max`, or any positive integer when `max` is `None`.
    fn positive_int(&self, key: &str, max: Option<i64>) -> Result<Option<i64>, String> {
        let Some(node) = self.get(key) else {
            return Ok(None);
        };
        match (&node.value, max) {
            (Value::Int(n), None) if *n > 0 => Ok(Some(*n)),
            (Value::Int(n), Some(max)) if (1..=max).contains(n) => Ok(Some(*n)),
            (_, None) => Err(format!(
                "options.{key}: expected a positive integer, found {}",
                node.describe()
            )),
            (_, Some(max)) => Err(format!(
                "options.{key}: expected a positive integer up to {max}, found {}",
                node.describe()
            )),
        }
    }

    /// A list of strings; an element of another type is reported with its index.
    fn strings(&self, key: &str) -> Result<Vec<&'a str>, String> {
        let Some(node) = self.get(key) else {
            return Ok(Vec::new());
        };
        let items = node.as_seq().ok_or_else(|| {
            format!(
                "options.{key}: expected an array of strings, found {}",
                node.describe()
            )
        })?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str().ok_or_else(|| {
                    format!(
                        "options.{key}[{i}]: expected a string, found {}",
                        item.describe()
                    )
                })
            })
            .collect()
    }
}

/// A password of `length` characters from [`PASSWORD_ALPHABET`], by rejection sampling.
fn password(length: i64) -> Result<String, String> {
    let length = usize::try_from(length)
        .map_err(|_| format!("options.length: expected a positive integer, found {length}"))?;
    let mut text = String::with_capacity(length);
    let mut bytes = [0u8; 64];
    while text.len() < length {
        openssl::rand::rand_bytes(&mut bytes)
            .map_err(|e| format!("cannot get random bytes from openssl: {e}"))?;
        for &byte in bytes.iter().filter(|b| **b < PASSWORD_BYTE_LIMIT) {
            if text.len() == length {
                break;
            }
            // Below the limit, `byte % 36` is uniform over the alphabet.
            let index = usize::from(byte) % PASSWORD_ALPHABET.len();
            text.push(char::from(PASSWORD_ALPHABET[index]));
        }
    }
    Ok(text)
}

/// `{private_key, public_key}`: PKCS#1 private key and SubjectPublicKeyInfo public key PEM.
fn rsa_key(span: &Span) -> Result<Node, String> {
    let key = new_rsa_key(RSA_KEY_BITS)?;
    let public_key = key
        .public_key_to_pem()
        .map_err(|e| format!("cannot encode the RSA public key: {e}"))?;
    Ok(string_map(
        vec![
            ("private_key", private_key_pem(&key)?),
            ("public_key", pem_text(public_key)?),
        ],
        span,
    ))
}

/// `{private_key, public_key, public_key_fingerprint}`: a PKCS#1 private key PEM, the OpenSSH
/// `ssh-rsa AAAA…` public key (no comment, as bosh-cli) and the legacy MD5 fingerprint of its
/// wire-format blob (`ab:cd:…`, what `ssh-keygen -E md5 -l` shows and bosh-cli stores).
fn ssh_key(span: &Span) -> Result<Node, String> {
    let key = new_rsa_key(RSA_KEY_BITS)?;
    let blob = ssh_rsa_blob(key.e(), key.n())?;
    let fingerprint = hash(MessageDigest::md5(), &blob)
        .map_err(|e| format!("cannot compute the MD5 fingerprint of the SSH key: {e}"))?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let public_key = format!("ssh-rsa {}", openssl::base64::encode_block(&blob));
    Ok(string_map(
        vec![
            ("private_key", private_key_pem(&key)?),
            ("public_key", public_key),
            ("public_key_fingerprint", fingerprint),
        ],
        span,
    ))
}

/// The OpenSSH wire format of an RSA public key (RFC 4253 §6.6): string "ssh-rsa", mpint e,
/// mpint n.
fn ssh_rsa_blob(e: &BigNumRef, n: &BigNumRef) -> Result<Vec<u8>, String> {
    let mut blob = Vec::new();
    ssh_string(&mut blob, b"ssh-rsa")?;
    ssh_mpint(&mut blob, e)?;
    ssh_mpint(&mut blob, n)?;
    Ok(blob)
}

fn ssh_string(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), String> {
    let length = u32::try_from(bytes.len())
        .map_err(|_| format!("cannot encode an SSH string of {} bytes", bytes.len()))?;
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// An mpint is two's complement: a positive number whose top bit is set gets a zero byte in
/// front, or it would read as negative.
fn ssh_mpint(out: &mut Vec<u8>, n: &BigNumRef) -> Result<(), String> {
    let mut bytes = n.to_vec();
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    ssh_string(out, &bytes)
}

fn new_rsa_key(bits: u32) -> Result<Rsa<Private>, String> {
    Rsa::generate(bits).map_err(|e| format!("cannot generate a {bits}-bit RSA key: {e}"))
}

/// The PKCS#1 (`-----BEGIN RSA PRIVATE KEY-----`) PEM of a key.
fn private_key_pem(key: &Rsa<Private>) -> Result<String, String> {
    let pem = key
        .private_key_to_pem()
        .map_err(|e| format!("cannot encode the RSA private key: {e}"))?;
    pem_text(pem)
}

fn pem_text(pem: Vec<u8>) -> Result<String, String> {
    // PEM is ASCII; the error cannot show the bytes, which may be a private key.
    String::from_utf8(pem).map_err(|_| "openssl wrote a PEM block that is not UTF-8".to_string())
}

/// A map node of string values, in the given key order.
fn string_map(entries: Vec<(&str, String)>, span: &Span) -> Node {
    let mut map = Map::new();
    for (key, value) in entries {
        map.insert(
            Node::string(key, span.clone()),
            Node::string(value, span.clone()),
        );
    }
    Node::new(Value::Map(map), span.clone())
}

/// The CA a certificate is signed with.
struct Issuer {
    certificate: X509,
    key: PKey<Private>,
}

impl Issuer {
    /// Reads the value of the CA variable `ca_name`. Messages show only the kinds of what
    /// was found: the value holds a private key (or, when misnamed, some other secret).
    fn load(ca_name: &str, value: Option<&Node>) -> Result<Issuer, String> {
        let Some(value) = value else {
            return Err(format!(
                "options.ca: the CA variable '{ca_name}' has no value (expected a certificate with certificate and private_key)"
            ));
        };
        let Some(map) = value.as_map() else {
            return Err(format!(
                "options.ca: the CA variable '{ca_name}' is not a certificate (expected a map with certificate and private_key, found {})",
                value.kind()
            ));
        };
        let field = |key: &str| -> Result<&str, String> {
            match map.get(key) {
                Some(node) => node.as_str().ok_or_else(|| {
                    format!(
                        "options.ca: the CA variable '{ca_name}' has a {key} that is not PEM text (expected a string, found {})",
                        node.kind()
                    )
                }),
                None => Err(format!(
                    "options.ca: the CA variable '{ca_name}' has no {key} (expected a map with certificate and private_key)"
                )),
            }
        };
        let certificate = X509::from_pem(field("certificate")?.as_bytes()).map_err(|_| {
            format!(
                "options.ca: the certificate of CA variable '{ca_name}' is not a PEM certificate"
            )
        })?;
        // The callback answers any passphrase prompt with an empty passphrase: without it,
        // OpenSSL would ask for one on the terminal when the key is encrypted.
        let key = PKey::private_key_from_pem_callback(field("private_key")?.as_bytes(), |_| {
            Ok(0)
        })
        .map_err(|_| {
            format!(
                "options.ca: the private_key of CA variable '{ca_name}' is not an unencrypted PEM private key"
            )
        })?;
        let matches = certificate
            .public_key()
            .is_ok_and(|public| public.public_eq(&key));
        if !matches {
            return Err(format!(
                "options.ca: the private_key of CA variable '{ca_name}' does not belong to its certificate"
            ));
        }
        Ok(Issuer { certificate, key })
    }
}

/// A subject alternative name: an IP address or a DNS name.
enum AltName<'a> {
    Ip(IpAddr),
    Dns(&'a str),
}

/// Everything a certificate definition asks for, validated before any key is generated.
struct CertificateRequest<'a> {
    is_ca: bool,
    common_name: Option<&'a str>,
    organization: &'a str,
    alternative_names: Vec<AltName<'a>>,
    duration_days: i64,
    key_usage: Vec<SetKeyUsage>,
    extended_key_usage: Vec<AddExtendedKeyUsage>,
}

impl<'a> CertificateRequest<'a> {
    fn parse(options: &Options<'a>) -> Result<CertificateRequest<'a>, String> {
        let alternative_names = options
            .strings("alternative_names")?
            .into_iter()
            .enumerate()
            .map(|(i, text)| alt_name(i, text))
            .collect::<Result<_, _>>()?;
        let key_usage = options
            .strings("key_usage")?
            .into_iter()
            .map(|usage| lookup("key_usage", "key usage", &KEY_USAGES, usage))
            .collect::<Result<_, _>>()?;
        let extended_key_usage = options
            .strings("extended_key_usage")?
            .into_iter()
            .map(|usage| {
                lookup(
                    "extended_key_usage",
                    "extended key usage",
                    &EXTENDED_KEY_USAGES,
                    usage,
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(CertificateRequest {
            is_ca: options.boolean("is_ca")?.unwrap_or(false),
            common_name: options.string("common_name")?,
            organization: options
                .string("organization")?
                .unwrap_or(DEFAULT_ORGANIZATION),
            alternative_names,
            // `validity` reports the real upper limit (the year 9999).
            duration_days: options
                .positive_int("duration", None)?
                .unwrap_or(DEFAULT_DURATION_DAYS),
            key_usage,
            extended_key_usage,
        })
    }
}

/// Classifies one `alternative_names` entry: an IP address if it parses as one, else a DNS
/// name (wildcards allowed). DNS names are IA5Strings, so they must be ASCII.
fn alt_name(index: usize, text: &str) -> Result<AltName<'_>, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(AltName::Ip(ip));
    }
    if text.is_empty() || !text.is_ascii() {
        return Err(format!(
            "options.alternative_names[{index}]: expected an IP address or an ASCII DNS name, found {text:?}"
        ));
    }
    Ok(AltName::Dns(text))
}

/// Looks a usage name up in `table`, or says which names there are.
fn lookup<T: Copy>(key: &str, what: &str, table: &[(&str, T)], name: &str) -> Result<T, String> {
    table
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(known, _)| *known).collect();
            format!(
                "options.{key}: unknown {what} {name:?} (expected one of {})",
                names.join(", ")
            )
        })
}

/// `{ca, certificate, private_key}`: a self-signed root (`is_ca` without `ca`), or a leaf or
/// intermediate CA signed by the CA variable named in `options.ca`.
fn certificate(options: &Options<'_>, ca: Option<&Node>, span: &Span) -> Result<Node, String> {
    let request = CertificateRequest::parse(options)?;
    let issuer = match options.string("ca")? {
        Some(ca_name) => Some(Issuer::load(ca_name, ca)?),
        None if request.is_ca => None,
        None => {
            return Err(
                "certificate needs options.ca (the name of a CA variable) or options.is_ca: true"
                    .to_string(),
            );
        }
    };
    let (not_before, not_after) = validity(request.duration_days)?;

    let rsa = new_rsa_key(CERTIFICATE_KEY_BITS)?;
    let private_key = private_key_pem(&rsa)?;
    let key = PKey::from_rsa(rsa).map_err(failed)?;
    let subject = subject_name(&request)?;

    let mut builder = X509Builder::new().map_err(failed)?;
    builder.set_version(2).map_err(failed)?; // X.509 v3, for extensions
    let serial = serial_number()?.to_asn1_integer().map_err(failed)?;
    builder.set_serial_number(&serial).map_err(failed)?;
    builder.set_subject_name(&subject).map_err(failed)?;
    match &issuer {
        Some(issuer) => builder.set_issuer_name(issuer.certificate.subject_name()),
        None => builder.set_issuer_name(&subject),
    }
    .map_err(failed)?;
    builder.set_pubkey(&key).map_err(failed)?;
    builder.set_not_before(&not_before).map_err(failed)?;
    builder.set_not_after(&not_after).map_err(failed)?;

    let mut basic_constraints = BasicConstraints::new();
    basic_constraints.critical();
    if request.is_ca {
        basic_constraints.ca();
    }
    builder
        .append_extension(basic_constraints.build().map_err(failed)?)
        .map_err(failed)?;

    // Critical, as Go's x509 package (and so bosh-cli) marks it.
    let mut key_usage = KeyUsage::new();
    key_usage.critical();
    if !request.key_usage.is_empty() {
        for set in &request.key_usage {
            set(&mut key_usage);
        }
    } else if request.is_ca {
        key_usage.key_cert_sign().crl_sign();
    } else {
        key_usage.digital_signature().key_encipherment();
    }
    builder
        .append_extension(key_usage.build().map_err(failed)?)
        .map_err(failed)?;

    if !request.extended_key_usage.is_empty() {
        let mut extended = ExtendedKeyUsage::new();
        for add in &request.extended_key_usage {
            add(&mut extended);
        }
        builder
            .append_extension(extended.build().map_err(failed)?)
            .map_err(failed)?;
    }

    let issuer_certificate = issuer.as_ref().map(|issuer| issuer.certificate.as_ref());
    // The context is built per extension: it borrows the builder, which appending needs
    // mutably. Its subject must already have the public key the identifier hashes.
    let subject_key_id = SubjectKeyIdentifier::new()
        .build(&builder.x509v3_context(issuer_certificate, None))
        .map_err(failed)?;
    builder.append_extension(subject_key_id).map_err(failed)?;
    if issuer_certificate.is_some() {
        let authority_key_id = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&builder.x509v3_context(issuer_certificate, None))
            .map_err(failed)?;
        builder.append_extension(authority_key_id).map_err(failed)?;
    }

    if !request.alternative_names.is_empty() {
        let mut names = SubjectAlternativeName::new();
        for name in &request.alternative_names {
            match name {
                AltName::Ip(ip) => names.ip(&ip.to_string()),
                AltName::Dns(dns) => names.dns(dns),
            };
        }
        let extension = names
            .build(&builder.x509v3_context(issuer_certificate, None))
            .map_err(failed)?;
        builder.append_extension(extension).map_err(failed)?;
    }

    let signing_key = issuer.as_ref().map_or(&key, |issuer| &issuer.key);
    builder
        .sign(signing_key, MessageDigest::sha256())
        .map_err(failed)?;
    let certificate = builder.build();

    let certificate_pem = pem_text(certificate.to_pem().map_err(failed)?)?;
    // `ca` is the signing certificate, re-encoded: the CA variable's `certificate` may hold
    // more than one PEM block, of which OpenSSL signed with the first.
    let ca_pem = match &issuer {
        Some(issuer) => pem_text(issuer.certificate.to_pem().map_err(failed)?)?,
        None => certificate_pem.clone(),
    };
    Ok(string_map(
        vec![
            ("ca", ca_pem),
            ("certificate", certificate_pem),
            ("private_key", private_key),
        ],
        span,
    ))
}

/// The message for an OpenSSL failure while building a certificate. OpenSSL's errors name
/// functions and reasons, never key material.
fn failed(error: ErrorStack) -> String {
    format!("cannot build the certificate: {error}")
}

/// Subject `C=USA, O=<organization>, CN=<common_name>`, in the order Go writes them.
fn subject_name(request: &CertificateRequest<'_>) -> Result<X509Name, String> {
    let mut name = X509NameBuilder::new().map_err(failed)?;
    // With an explicit string type OpenSSL stores the bytes as given, without its table of
    // length limits (2 for the country, 64 for the others), which bosh-cli does not apply.
    name.append_entry_by_nid_with_type(Nid::COUNTRYNAME, COUNTRY, Asn1Type::PRINTABLESTRING)
        .map_err(failed)?;
    if !request.organization.is_empty() {
        name.append_entry_by_nid_with_type(
            Nid::ORGANIZATIONNAME,
            request.organization,
            Asn1Type::UTF8STRING,
        )
        .map_err(failed)?;
    }
    if let Some(common_name) = request.common_name.filter(|cn| !cn.is_empty()) {
        name.append_entry_by_nid_with_type(Nid::COMMONNAME, common_name, Asn1Type::UTF8STRING)
            .map_err(failed)?;
    }
    Ok(name.build())
}

/// A random 128-bit positive serial number (zero is not a valid serial, so it is redrawn).
fn serial_number() -> Result<BigNum, String> {
    loop {
        let mut serial = BigNum::new().map_err(failed)?;
        serial
            .rand(128, MsbOption::MAYBE_ZERO, false)
            .map_err(failed)?;
        if serial.num_bits() > 0 {
            return Ok(serial);
        }
    }
}

/// NotBefore one day ago (so that hosts whose clock lags still accept the certificate) and
/// NotAfter `days` days from now.
fn validity(days: i64) -> Result<(Asn1Time, Asn1Time), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .ok_or_else(|| {
            "cannot build the certificate: the system clock is before 1970".to_string()
        })?;
    let too_long = || {
        format!(
            "options.duration: expected a number of days that ends before the year 10000, found {days}"
        )
    };
    let end = days
        .checked_mul(SECONDS_PER_DAY)
        .and_then(|seconds| now.checked_add(seconds))
        .filter(|end| *end <= LAST_X509_TIME)
        .ok_or_else(too_long)?;
    let not_before = Asn1Time::from_unix(now - SECONDS_PER_DAY).map_err(failed)?;
    let not_after = Asn1Time::from_unix(end).map_err(|_| too_long())?;
    Ok((not_before, not_after))
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use openssl::symm::Cipher;
    use openssl::x509::{X509ExtendedKeyUsage, X509KeyUsage, X509VerifyResult};

    use super::*;
    use crate::yaml;

    fn opts(text: &str) -> Node {
        yaml::parse(text, "opts.yml").expect("test options parse")
    }

    fn field<'a>(node: &'a Node, key: &str) -> &'a str {
        node.get(key)
            .and_then(Node::as_str)
            .unwrap_or_else(|| panic!("generated value has no string {key}"))
    }

    fn cert_of(node: &Node) -> X509 {
        X509::from_pem(field(node, "certificate").as_bytes()).expect("certificate PEM parses")
    }

    fn text_of(cert: &X509) -> String {
        String::from_utf8(cert.to_text().expect("to_text")).expect("utf-8")
    }

    fn gen_err(kind: &str, options: Option<&str>, ca: Option<&Node>) -> String {
        let node = options.map(opts);
        match generate("v", kind, node.as_ref(), ca) {
            Err(message) => message,
            // Not the value: it may hold a private key.
            Ok(_) => panic!("generating a {kind} with {options:?} should fail"),
        }
    }

    /// One root CA shared by the tests (3072-bit keys take a moment to generate).
    fn root() -> &'static Node {
        static ROOT: OnceLock<Node> = OnceLock::new();
        ROOT.get_or_init(|| {
            let options = opts("is_ca: true\ncommon_name: test-root\n");
            generate("root", "certificate", Some(&options), None).expect("root CA")
        })
    }

    fn signed(options: &str) -> Node {
        let options = opts(options);
        generate("leaf", "certificate", Some(&options), Some(root())).expect("signed cert")
    }

    fn entry(name: &openssl::x509::X509NameRef, nid: Nid) -> Option<String> {
        name.entries_by_nid(nid)
            .next()
            .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
    }

    fn validity_days(cert: &X509) -> i32 {
        cert.not_before().diff(cert.not_after()).expect("diff").days
    }

    #[test]
    fn password_has_default_length_and_alphabet() {
        let value = generate("admin", "password", None, None).unwrap();
        let text = value.as_str().unwrap();
        assert_eq!(text.len(), 20);
        assert!(
            text.bytes().all(|b| PASSWORD_ALPHABET.contains(&b)),
            "{text}"
        );
        assert_eq!(value.span, Span::synthetic("generated admin"));
    }

    #[test]
    fn password_length_option() {
        let options = opts("length: 77\n");
        let value = generate("p", "password", Some(&options), None).unwrap();
        let text = value.as_str().unwrap();
        assert_eq!(text.len(), 77);
        assert!(text.bytes().all(|b| PASSWORD_ALPHABET.contains(&b)));
        let options = opts("length: 1\n");
        let value = generate("p", "password", Some(&options), None).unwrap();
        assert_eq!(value.as_str().unwrap().len(), 1);
    }

    #[test]
    fn passwords_use_the_whole_alphabet_and_differ() {
        let mut seen = [false; 256];
        let mut all = std::collections::HashSet::new();
        for _ in 0..200 {
            let value = password(20).unwrap();
            for b in value.bytes() {
                seen[usize::from(b)] = true;
            }
            all.insert(value);
        }
        assert_eq!(all.len(), 200);
        for &b in PASSWORD_ALPHABET {
            assert!(seen[usize::from(b)], "never saw {:?}", char::from(b));
        }
    }

    #[test]
    fn password_length_errors() {
        for (text, found) in [
            ("length: 0\n", "0"),
            ("length: -3\n", "-3"),
            ("length: \"20\"\n", "\"20\""),
            ("length: 2.5\n", "2.5"),
            ("length: 5000\n", "5000"),
            ("length: [1]\n", "an array"),
        ] {
            assert_eq!(
                gen_err("password", Some(text), None),
                format!("options.length: expected a positive integer up to 4096, found {found}")
            );
        }
    }

    #[test]
    fn null_options_and_unknown_keys_are_ignored() {
        let options = opts("length: ~\nflavour: salty\n");
        let value = generate("p", "password", Some(&options), None).unwrap();
        assert_eq!(value.as_str().unwrap().len(), 20);
        let null = opts("~");
        assert!(generate("p", "password", Some(&null), None).is_ok());
    }

    #[test]
    fn options_must_be_a_map() {
        assert_eq!(
            gen_err("password", Some("[1, 2]"), None),
            "options: expected a map, found an array"
        );
        assert_eq!(
            gen_err("certificate", Some("is_ca"), None),
            "options: expected a map, found \"is_ca\""
        );
    }

    #[test]
    fn unknown_types_are_errors() {
        for kind in ["user", "json", "value", ""] {
            assert_eq!(
                gen_err(kind, Some("length: 3\n"), None),
                format!(
                    "cannot generate variables of type '{kind}' (expected password, certificate, rsa or ssh)"
                )
            );
        }
    }

    #[test]
    fn rsa_key_shape() {
        let value = generate("k", "rsa", None, None).unwrap();
        let private = field(&value, "private_key");
        let public = field(&value, "public_key");
        assert!(private.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let private = Rsa::private_key_from_pem(private.as_bytes()).unwrap();
        let public = Rsa::public_key_from_pem(public.as_bytes()).unwrap();
        assert_eq!(private.size() * 8, 2048);
        assert_eq!(private.n(), public.n());
        assert_eq!(private.e(), public.e());
        let keys: Vec<&str> = value.as_map().unwrap().string_keys().collect();
        assert_eq!(keys, ["private_key", "public_key"]);
    }

    #[test]
    fn ssh_key_shape() {
        let value = generate("k", "ssh", None, None).unwrap();
        let private = field(&value, "private_key");
        assert!(private.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        let private = Rsa::private_key_from_pem(private.as_bytes()).unwrap();
        assert_eq!(private.size() * 8, 2048);

        let public = field(&value, "public_key");
        let encoded = public.strip_prefix("ssh-rsa ").expect("ssh-rsa prefix");
        assert!(!encoded.contains(' '), "no comment: {public}");
        let blob = openssl::base64::decode_block(encoded).unwrap();
        assert_eq!(blob, ssh_rsa_blob(private.e(), private.n()).unwrap());
        // string "ssh-rsa", then mpint e = 65537 (3 bytes, top bit clear).
        assert_eq!(&blob[..11], b"\0\0\0\x07ssh-rsa");
        assert_eq!(&blob[11..18], b"\0\0\0\x03\x01\x00\x01");
        // mpint n: 2048 bits with the top bit set, so a zero byte is prepended.
        assert_eq!(&blob[18..23], b"\0\0\x01\x01\0");
        assert_eq!(blob.len(), 23 + 256);

        let fingerprint = field(&value, "public_key_fingerprint");
        let md5 = hash(MessageDigest::md5(), &blob).unwrap();
        let expected: Vec<String> = md5.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(fingerprint, expected.join(":"));
        assert_eq!(fingerprint.len(), 47);
    }

    #[test]
    fn mpint_encoding() {
        let mut out = Vec::new();
        ssh_mpint(&mut out, &BigNum::from_u32(0x7f).unwrap()).unwrap();
        ssh_mpint(&mut out, &BigNum::from_u32(0x80).unwrap()).unwrap();
        ssh_mpint(&mut out, &BigNum::from_u32(0).unwrap()).unwrap();
        assert_eq!(out, b"\0\0\0\x01\x7f\0\0\0\x02\0\x80\0\0\0\0");
    }

    #[test]
    fn root_ca() {
        let value = root();
        let keys: Vec<&str> = value.as_map().unwrap().string_keys().collect();
        assert_eq!(keys, ["ca", "certificate", "private_key"]);
        assert_eq!(field(value, "ca"), field(value, "certificate"));
        let cert = cert_of(value);
        assert_eq!(cert.issued(&cert), X509VerifyResult::OK);
        assert!(cert.verify(&cert.public_key().unwrap()).unwrap());
        let subject = cert.subject_name();
        assert_eq!(
            entry(subject, Nid::COMMONNAME).as_deref(),
            Some("test-root")
        );
        assert_eq!(
            entry(subject, Nid::ORGANIZATIONNAME).as_deref(),
            Some("Cloud Foundry")
        );
        assert_eq!(entry(subject, Nid::COUNTRYNAME).as_deref(), Some("USA"));
        let text = text_of(&cert);
        assert!(text.contains("X509v3 Basic Constraints: critical\n                CA:TRUE"));
        assert_eq!(
            cert.key_usage(),
            Some(X509KeyUsage::KEY_CERT_SIGN | X509KeyUsage::CRL_SIGN)
        );
        assert!(cert.subject_key_id().is_some());
        assert!(cert.authority_key_id().is_none());
        assert_eq!(cert.extended_key_usage(), None);
        assert_eq!(validity_days(&cert), 366);

        let private = field(value, "private_key");
        assert!(private.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        let key = PKey::from_rsa(Rsa::private_key_from_pem(private.as_bytes()).unwrap()).unwrap();
        assert_eq!(key.bits(), 3072);
        assert!(cert.public_key().unwrap().public_eq(&key));

        let serial = cert.serial_number().to_bn().unwrap();
        assert!(!serial.is_negative());
        assert!(serial.num_bits() > 0 && serial.num_bits() <= 128);
        assert_eq!(
            cert.signature_algorithm().object().nid(),
            Nid::SHA256WITHRSAENCRYPTION
        );
    }

    #[test]
    fn leaf_signed_by_ca_with_options() {
        let value = signed(
            "ca: root\ncommon_name: 10.0.0.5\norganization: Acme\nduration: 30\n\
             alternative_names: [10.0.0.5, \"*.web.internal\", web.internal, \"fd00::1\"]\n\
             extended_key_usage: [server_auth, client_auth]\nunknown_option: 1\n",
        );
        let ca = cert_of(root());
        let cert = cert_of(&value);
        assert_eq!(field(&value, "ca"), field(root(), "certificate"));
        assert_eq!(ca.issued(&cert), X509VerifyResult::OK);
        assert!(cert.verify(&ca.public_key().unwrap()).unwrap());
        assert_eq!(
            entry(cert.issuer_name(), Nid::COMMONNAME).as_deref(),
            Some("test-root")
        );
        assert_eq!(
            entry(cert.subject_name(), Nid::COMMONNAME).as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(
            entry(cert.subject_name(), Nid::ORGANIZATIONNAME).as_deref(),
            Some("Acme")
        );

        let names = cert.subject_alt_names().expect("SANs");
        let ips: Vec<Vec<u8>> = names
            .iter()
            .filter_map(|n| n.ipaddress().map(<[u8]>::to_vec))
            .collect();
        let dns: Vec<&str> = names.iter().filter_map(|n| n.dnsname()).collect();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let IpAddr::V6(v6) = v6 else { unreachable!() };
        assert_eq!(ips, vec![vec![10, 0, 0, 5], v6.octets().to_vec()]);
        assert_eq!(dns, ["*.web.internal", "web.internal"]);

        let text = text_of(&cert);
        assert!(text.contains("X509v3 Basic Constraints: critical\n                CA:FALSE"));
        assert_eq!(
            cert.key_usage(),
            Some(X509KeyUsage::DIGITAL_SIGNATURE | X509KeyUsage::KEY_ENCIPHERMENT)
        );
        assert_eq!(
            cert.extended_key_usage(),
            Some(X509ExtendedKeyUsage::SSL_SERVER | X509ExtendedKeyUsage::SSL_CLIENT)
        );
        assert_eq!(
            cert.authority_key_id().unwrap().as_slice(),
            ca.subject_key_id().unwrap().as_slice()
        );
        assert_eq!(validity_days(&cert), 31);
        // NotBefore is a day back, NotAfter 30 days ahead.
        let now = Asn1Time::days_from_now(0).unwrap();
        let back = cert.not_before().diff(&now).unwrap();
        assert_eq!(back.days, 1, "{back:?}");
        let ahead = now.diff(cert.not_after()).unwrap();
        assert!(
            ahead.days == 30 || (ahead.days == 29 && ahead.secs > 86_000),
            "{ahead:?}"
        );

        let key = PKey::private_key_from_pem(field(&value, "private_key").as_bytes()).unwrap();
        assert_eq!(key.bits(), 3072);
        assert!(cert.public_key().unwrap().public_eq(&key));
        assert_ne!(
            cert.serial_number().to_bn().unwrap(),
            ca.serial_number().to_bn().unwrap()
        );
    }

    #[test]
    fn leaf_key_usage_and_other_extended_usages() {
        let value = signed(
            "ca: root\nkey_usage: [digital_signature, key_agreement]\n\
             extended_key_usage: [code_signing, email_protection, timestamping]\n",
        );
        let cert = cert_of(&value);
        assert_eq!(
            cert.key_usage(),
            Some(X509KeyUsage::DIGITAL_SIGNATURE | X509KeyUsage::KEY_AGREEMENT)
        );
        assert_eq!(
            cert.extended_key_usage(),
            Some(
                X509ExtendedKeyUsage::CODE_SIGN
                    | X509ExtendedKeyUsage::SMIME
                    | X509ExtendedKeyUsage::TIMESTAMP
            )
        );
        // No common name given: the subject has none; no SANs either.
        assert_eq!(entry(cert.subject_name(), Nid::COMMONNAME), None);
        assert!(cert.subject_alt_names().is_none());
        assert_eq!(validity_days(&cert), 366);
    }

    #[test]
    fn intermediate_ca() {
        let value = signed("ca: root\nis_ca: true\ncommon_name: intermediate\n");
        let root_cert = cert_of(root());
        let cert = cert_of(&value);
        assert_eq!(root_cert.issued(&cert), X509VerifyResult::OK);
        assert_eq!(field(&value, "ca"), field(root(), "certificate"));
        assert!(text_of(&cert).contains("CA:TRUE"));
        assert_eq!(
            cert.key_usage(),
            Some(X509KeyUsage::KEY_CERT_SIGN | X509KeyUsage::CRL_SIGN)
        );
        assert!(cert.authority_key_id().is_some());

        // And it can sign in turn.
        let options = opts("ca: intermediate\ncommon_name: deep\n");
        let leaf = generate("deep", "certificate", Some(&options), Some(&value)).unwrap();
        assert_eq!(cert.issued(&cert_of(&leaf)), X509VerifyResult::OK);
        assert_eq!(field(&leaf, "ca"), field(&value, "certificate"));
    }

    #[test]
    fn certificate_needs_a_ca_or_is_ca() {
        let expected =
            "certificate needs options.ca (the name of a CA variable) or options.is_ca: true";
        assert_eq!(gen_err("certificate", None, None), expected);
        assert_eq!(
            gen_err("certificate", Some("common_name: x\nis_ca: false\n"), None),
            expected
        );
    }

    #[test]
    fn certificate_option_type_errors() {
        for (options, expected) in [
            (
                "is_ca: \"true\"\n",
                "options.is_ca: expected a boolean, found \"true\"",
            ),
            ("ca: 12\n", "options.ca: expected a string, found 12"),
            (
                "is_ca: true\ncommon_name: [a]\n",
                "options.common_name: expected a string, found an array",
            ),
            (
                "is_ca: true\norganization: {a: b}\n",
                "options.organization: expected a string, found a map",
            ),
            (
                "is_ca: true\nalternative_names: a.internal\n",
                "options.alternative_names: expected an array of strings, found \"a.internal\"",
            ),
            (
                "is_ca: true\nalternative_names: [a.internal, 7]\n",
                "options.alternative_names[1]: expected a string, found 7",
            ),
            (
                "is_ca: true\nalternative_names: [\"\"]\n",
                "options.alternative_names[0]: expected an IP address or an ASCII DNS name, found \"\"",
            ),
            (
                "is_ca: true\nalternative_names: [\"bücher.de\"]\n",
                "options.alternative_names[0]: expected an IP address or an ASCII DNS name, found \"bücher.de\"",
            ),
            (
                "is_ca: true\nduration: 0\n",
                "options.duration: expected a positive integer, found 0",
            ),
            (
                "is_ca: true\nduration: 10000000\n",
                "options.duration: expected a number of days that ends before the year 10000, found 10000000",
            ),
            (
                "is_ca: true\nduration: 106751991167300\n",
                "options.duration: expected a number of days that ends before the year 10000, found 106751991167300",
            ),
            (
                "is_ca: true\nkey_usage: [sign]\n",
                "options.key_usage: unknown key usage \"sign\" (expected one of digital_signature, non_repudiation, key_encipherment, data_encipherment, key_agreement, key_cert_sign, crl_sign, encipher_only, decipher_only)",
            ),
            (
                "is_ca: true\nkey_usage: digital_signature\n",
                "options.key_usage: expected an array of strings, found \"digital_signature\"",
            ),
            (
                "is_ca: true\nextended_key_usage: [server_auth, ServerAuth]\n",
                "options.extended_key_usage: unknown extended key usage \"ServerAuth\" (expected one of server_auth, client_auth, code_signing, email_protection, timestamping)",
            ),
        ] {
            assert_eq!(gen_err("certificate", Some(options), None), expected);
        }
    }

    #[test]
    fn missing_ca_value_names_the_ca_variable() {
        let err = gen_err("certificate", Some("ca: default_ca\n"), None);
        assert!(err.starts_with("options.ca: "), "{err}");
        assert!(err.contains("'default_ca'"), "{err}");
        let err = gen_err("certificate", Some("ca: default_ca\nis_ca: true\n"), None);
        assert!(err.contains("'default_ca'"), "{err}");
    }

    #[test]
    fn malformed_ca_values_are_errors_without_secrets() {
        let root = root();
        let root_cert = field(root, "certificate");
        let root_key = field(root, "private_key");
        let other_key =
            String::from_utf8(Rsa::generate(1024).unwrap().private_key_to_pem().unwrap()).unwrap();
        let encrypted_key = String::from_utf8(
            Rsa::private_key_from_pem(root_key.as_bytes())
                .unwrap()
                .private_key_to_pem_passphrase(Cipher::aes_256_cbc(), b"hunter2")
                .unwrap(),
        )
        .unwrap();
        let map = |entries: &[(&str, Node)]| {
            let mut map = Map::new();
            for (k, v) in entries {
                map.insert(Node::string(*k, Span::synthetic("t")), v.clone());
            }
            Node::new(Value::Map(map), Span::synthetic("t"))
        };
        let s = |text: &str| Node::string(text, Span::synthetic("t"));
        let cases = [
            (
                s("supersecretpassword"),
                "is not a certificate (expected a map with certificate and private_key, found a string)",
            ),
            (map(&[("certificate", s(root_cert))]), "has no private_key"),
            (map(&[("private_key", s(root_key))]), "has no certificate"),
            (
                map(&[("certificate", s(root_cert)), ("private_key", opts("[1]"))]),
                "has a private_key that is not PEM text (expected a string, found an array)",
            ),
            (
                map(&[
                    ("certificate", s("not a pem")),
                    ("private_key", s(root_key)),
                ]),
                "the certificate of CA variable 'my_ca' is not a PEM certificate",
            ),
            (
                map(&[("certificate", s(root_cert)), ("private_key", s("garbage"))]),
                "the private_key of CA variable 'my_ca' is not an unencrypted PEM private key",
            ),
            (
                map(&[
                    ("certificate", s(root_cert)),
                    ("private_key", s(&encrypted_key)),
                ]),
                "the private_key of CA variable 'my_ca' is not an unencrypted PEM private key",
            ),
            (
                map(&[
                    ("certificate", s(root_cert)),
                    ("private_key", s(&other_key)),
                ]),
                "the private_key of CA variable 'my_ca' does not belong to its certificate",
            ),
        ];
        for (ca, expected) in cases {
            let err = gen_err("certificate", Some("ca: my_ca\n"), Some(&ca));
            assert!(err.starts_with("options.ca: "), "{err}");
            assert!(err.contains("'my_ca'"), "{err}");
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains("supersecret"), "{err}");
            assert!(!err.contains("-----"), "{err}");
        }
    }

    #[test]
    fn ca_key_may_be_pkcs8() {
        // A CA stored by another tool may have its key in PKCS#8; it signs all the same.
        let root = root();
        let key = PKey::private_key_from_pem(field(root, "private_key").as_bytes()).unwrap();
        let pkcs8 = String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let mut map = Map::new();
        let span = Span::synthetic("t");
        map.insert(
            Node::string("certificate", span.clone()),
            Node::string(field(root, "certificate"), span.clone()),
        );
        map.insert(
            Node::string("private_key", span.clone()),
            Node::string(pkcs8, span.clone()),
        );
        let ca = Node::new(Value::Map(map), span);
        let options = opts("ca: root\ncommon_name: x\n");
        let value = generate("x", "certificate", Some(&options), Some(&ca)).unwrap();
        assert_eq!(cert_of(root).issued(&cert_of(&value)), X509VerifyResult::OK);
    }

    #[test]
    fn long_names_are_kept_as_bosh_cli_keeps_them() {
        // OpenSSL's table limits CN to 64 characters; bosh-cli has no such limit.
        let long = "a".repeat(100);
        let value = signed(&format!("ca: root\ncommon_name: {long}\n"));
        let cert = cert_of(&value);
        assert_eq!(entry(cert.subject_name(), Nid::COMMONNAME), Some(long));
    }
}
