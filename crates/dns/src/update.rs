//! RFC 2136 dynamic updates, TSIG-signed (RFC 8945), to a primary the operator runs: add and
//! remove one TXT value, and read a name's TXT values back from the primary. For DNS-01 in zones
//! fleetgate does not serve. Messages through hickory-proto (`update_message`, `TSigner`); one
//! TCP exchange per call.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, update_message};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordSet, RecordType};

use crate::records::normalize_name;
use crate::{Error, Result};

/// Bound on one exchange with the primary (connect, send, answer).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Clock difference the primary may have from us (TSIG "fudge", RFC 8945 recommends 300 s).
const FUDGE: u16 = 300;

/// A TSIG key: its name (as the primary knows it), algorithm and secret.
#[derive(Clone)]
pub struct TsigKey {
    name: Name,
    algorithm: TsigAlgorithm,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name.to_ascii())
            .field("algorithm", &self.algorithm.to_name().to_ascii())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TsigKey {
    /// `algorithm` as BIND writes it (`hmac-sha256`, `hmac-sha512`, ...); `secret_base64` as in
    /// `tsig-keygen`'s output.
    pub fn new(name: &str, algorithm: &str, secret_base64: &str) -> Result<TsigKey> {
        let name = fqdn(&normalize_name(name)?)?;
        let algorithm = match algorithm.to_ascii_lowercase().as_str() {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => {
                return Err(Error::Config(format!(
                    "TSIG algorithm {other:?} is not supported; use hmac-sha256, hmac-sha384 or hmac-sha512"
                )));
            }
        };
        let secret = data_encoding::BASE64
            .decode(secret_base64.trim().as_bytes())
            .map_err(|e| Error::Config(format!("the TSIG secret is not base64: {e}")))?;
        if secret.is_empty() {
            return Err(Error::Config("the TSIG secret is empty".to_string()));
        }
        Ok(TsigKey {
            name,
            algorithm,
            secret,
        })
    }

    fn signer(&self) -> Result<TSigner> {
        TSigner::new(
            self.secret.clone(),
            self.algorithm.clone(),
            self.name.clone(),
            FUDGE,
        )
        .map_err(|e| Error::Config(format!("TSIG key: {e}")))
    }
}

/// Updates to one zone on one primary.
#[derive(Debug, Clone)]
pub struct Rfc2136 {
    server: SocketAddr,
    zone: Name,
    zone_text: String,
    tsig: Option<TsigKey>,
}

impl Rfc2136 {
    /// Updates to `zone` sent to `server`, signed with `tsig` (recommended: without it the
    /// primary must allow unsigned updates from this address).
    pub fn new(server: SocketAddr, zone: &str, tsig: Option<TsigKey>) -> Result<Rfc2136> {
        let zone_text = normalize_name(zone)?;
        Ok(Rfc2136 {
            server,
            zone: fqdn(&zone_text)?,
            zone_text,
            tsig,
        })
    }

    pub fn zone(&self) -> &str {
        &self.zone_text
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Whether `name` lies in this zone (at or below its apex).
    pub fn covers(&self, name: &str) -> bool {
        normalize_name(name)
            .and_then(|n| fqdn(&n))
            .is_ok_and(|n| self.zone.zone_of(&n))
    }

    /// Add `value` to the TXT records of `name` (other values stay).
    pub async fn add_txt(&self, name: &str, value: &str, ttl: u32) -> Result<()> {
        let rrset = self.txt_rrset(name, value, ttl)?;
        let message = update_message::append(rrset, self.zone.clone(), false, false);
        self.exchange(message, "add a TXT record").await.map(drop)
    }

    /// Remove `value` from the TXT records of `name`; a value that is not there is fine.
    pub async fn remove_txt(&self, name: &str, value: &str) -> Result<()> {
        let rrset = self.txt_rrset(name, value, 0)?;
        let message = update_message::delete_by_rdata(rrset, self.zone.clone(), false);
        self.exchange(message, "remove a TXT record")
            .await
            .map(drop)
    }

    /// The TXT values of `name` as the primary serves them now (a non-recursive query to it).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>> {
        let qname = self.name_in_zone(name)?;
        let mut message = Message::new();
        message
            .set_id(fastrand::u16(..))
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(false)
            .add_query(Query::query(qname, RecordType::TXT));
        let answer = self.exchange(message, "read TXT records").await?;
        let mut values: Vec<String> = answer
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::TXT(txt) => Some(
                    txt.txt_data()
                        .iter()
                        .map(|part| String::from_utf8_lossy(part))
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect();
        values.sort();
        Ok(values)
    }

    fn name_in_zone(&self, name: &str) -> Result<Name> {
        let name = fqdn(&normalize_name(name)?)?;
        if !self.zone.zone_of(&name) {
            return Err(Error::Invalid(format!(
                "{} is not in the zone {}",
                name.to_ascii(),
                self.zone_text
            )));
        }
        Ok(name)
    }

    fn txt_rrset(&self, name: &str, value: &str, ttl: u32) -> Result<RecordSet> {
        let name = self.name_in_zone(name)?;
        Ok(RecordSet::from(Record::from_rdata(
            name,
            ttl,
            RData::TXT(TXT::new(vec![value.to_string()])),
        )))
    }

    /// Sign (with the TSIG key), send over TCP, read the answer, check its signature and
    /// rcode. NOERROR (and NXDOMAIN for queries) pass; anything else is an error.
    async fn exchange(&self, mut message: Message, what: &str) -> Result<Message> {
        let mut verifier = match &self.tsig {
            Some(key) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
                    .unwrap_or(0);
                message
                    .finalize(&key.signer()?, now)
                    .map_err(|e| Error::Invalid(format!("cannot sign the update: {e}")))?
            }
            None => None,
        };
        let bytes = message
            .to_vec()
            .map_err(|e| Error::Invalid(format!("cannot encode the update: {e}")))?;
        let len = u16::try_from(bytes.len())
            .map_err(|_| Error::Invalid("update too long".to_string()))?;
        let server = self.server;
        let io = |source| Error::Io {
            what: format!("{what} at {server}"),
            source,
        };
        let frame = tokio::time::timeout(
            EXCHANGE_TIMEOUT,
            crate::wire::tcp_exchange(server, len, &bytes),
        )
        .await
        .map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer in time",
            ))
        })?
        .map_err(io)?;
        let answer = Message::from_vec(&frame)
            .map_err(|e| Error::Invalid(format!("unreadable answer from {server}: {e}")))?;
        if answer.id() != message.id() {
            return Err(Error::Invalid(format!("{server} answered another message")));
        }
        let rcode = answer.response_code();
        if let Some(verify) = verifier.as_mut()
            && rcode != ResponseCode::NotAuth
        {
            // A primary that refused our key (NOTAUTH, BADKEY, BADSIG) answers unsigned.
            verify(&frame)
                .map_err(|e| Error::Invalid(format!("the answer from {server} fails TSIG: {e}")))?;
        }
        let query = message.op_code() == OpCode::Query;
        if rcode == ResponseCode::NoError || (query && rcode == ResponseCode::NXDomain) {
            return Ok(answer);
        }
        Err(Error::Rejected {
            what: format!("{what} in {} at {server}", self.zone_text),
            rcode: rcode.to_string(),
            retryable: rcode == ResponseCode::ServFail,
        })
    }
}

fn fqdn(text: &str) -> Result<Name> {
    let mut name = Name::from_ascii(text)
        .map_err(|e| Error::Invalid(format!("invalid DNS name {text:?}: {e}")))?;
    name.set_fqdn(true);
    Ok(name)
}
