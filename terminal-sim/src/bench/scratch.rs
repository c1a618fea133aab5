//! Before a bench writes anything: is the brand a scratch brand? A run
//! adds a store, its terminals, funded cards and all its traffic to the
//! brand's signed ledger for good, so it refuses a brand that holds any
//! record it did not write (only the brand's creation and earlier bench
//! runs, operator "bench", are its own) unless `--into-live-brand` says so.
//! The brand's export is read record by record and dropped at the first
//! foreign one, so a live brand is refused without reading its ledger.
use std::io::{self, Write};
use std::time::Duration;

use anyhow::bail;
use prost::Message;

use cardd::client::{connect_to, TlsClient};
use cardd::pb::{self, export_item::Item, ExportItem, RecordKind};
use ed25519_dalek::SigningKey;

use super::provision::OPERATOR;

/// The first record of the brand that a bench did not write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    /// Its sequence number.
    pub seq: u64,
    /// Its kind.
    pub kind: String,
    /// Its operator.
    pub operator: String,
}

/// An export stream read as it arrives: counts records and stops (with an
/// error, which ends the export) at the first one a bench did not write.
#[derive(Default)]
pub struct Scan {
    buf: Vec<u8>,
    past_magic: bool,
    /// Records read.
    pub records: u64,
    /// The first foreign record, if any.
    pub foreign: Option<Foreign>,
}

impl Scan {
    /// Reads every whole item in the buffer.
    fn items(&mut self) -> io::Result<()> {
        let mut at = 0;
        if !self.past_magic {
            if self.buf.len() < 8 {
                return Ok(());
            }
            (at, self.past_magic) = (8, true);
        }
        while let Some(head) = self.buf.get(at..at + 4) {
            let len = u32::from_be_bytes(head.try_into().expect("4 bytes")) as usize;
            let Some(body) = self.buf.get(at + 4..at + 4 + len) else {
                break;
            };
            let item = ExportItem::decode(body).map_err(io::Error::other)?;
            at += 4 + len;
            if let Some(Item::Record(bytes)) = item.item {
                self.record(&bytes)?;
            }
        }
        self.buf.drain(..at);
        Ok(())
    }

    /// One record: the brand's creation and bench records are fine.
    fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        let rec = pb::Record::decode(bytes).map_err(io::Error::other)?;
        self.records += 1;
        if rec.kind() == RecordKind::BrandCreated || rec.operator == OPERATOR {
            return Ok(());
        }
        self.foreign = Some(Foreign {
            seq: rec.seq,
            kind: rec.kind().as_str_name().to_string(),
            operator: rec.operator,
        });
        Err(io::Error::other("a record the bench did not write"))
    }
}

impl Write for Scan {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.items()?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Refuses a brand that holds records a bench did not write, on a
/// connection of its own with the owner key.
pub async fn refuse_live_brand(
    addr: &str,
    tls: Option<&TlsClient>,
    owner_key: SigningKey,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut owner = tokio::time::timeout(timeout, connect_to(addr, owner_key, tls))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {addr}: no sign-on in time"))??;
    if owner.session.role() != pb::Role::Owner {
        return Ok(()); // provisioning refuses it, saying why
    }
    let mut scan = Scan::default();
    let read = owner.export(&mut scan).await;
    if let Some(f) = &scan.foreign {
        let s = &owner.session;
        bail!(
            "brand {} ({}) at {addr} holds records the bench did not write (record {}, {} by \
             operator \"{}\"). A bench run adds a store, its terminals, funded cards and all its \
             traffic to the brand's signed ledger for good: point it at a scratch daemon with a \
             data directory of its own (README, \"Load and benchmarks\"), or give \
             --into-live-brand if that is really meant",
            s.brand_id,
            s.brand_name,
            f.seq,
            f.kind,
            f.operator
        );
    }
    read.map_err(|e| {
        anyhow::anyhow!("reading the brand's ledger to check it is a scratch brand: {e}")
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cardd::audit::file::write_item;

    fn record(seq: u64, kind: RecordKind, operator: &str) -> Vec<u8> {
        let rec = pb::Record {
            seq,
            kind: kind as i32,
            operator: operator.into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        write_item(&mut out, Item::Record(rec.encode_to_vec())).expect("write");
        out
    }

    /// Feeds `bytes` to a scan in pieces of `step`.
    fn feed(bytes: &[u8], step: usize) -> (Scan, io::Result<()>) {
        let mut scan = Scan::default();
        for piece in bytes.chunks(step) {
            if let Err(e) = scan.write_all(piece) {
                return (scan, Err(e));
            }
        }
        (scan, Ok(()))
    }

    #[test]
    fn only_bench_records_and_the_brand_creation_pass() {
        let mut own = b"CARDDEX1".to_vec();
        own.extend(record(1, RecordKind::BrandCreated, ""));
        own.extend(record(2, RecordKind::StoreCreated, OPERATOR));
        own.extend(record(3, RecordKind::Purchase, OPERATOR));
        for step in [1, 7, own.len()] {
            let (scan, r) = feed(&own, step);
            assert!(r.is_ok(), "step {step}");
            assert_eq!((scan.records, scan.foreign), (3, None), "step {step}");
        }
        let mut live = own.clone();
        live.extend(record(4, RecordKind::CardIssued, "demo"));
        live.extend(record(5, RecordKind::Purchase, OPERATOR));
        let (scan, r) = feed(&live, 5);
        assert!(r.is_err());
        assert_eq!(
            scan.foreign,
            Some(Foreign {
                seq: 4,
                kind: "CARD_ISSUED".into(),
                operator: "demo".into()
            })
        );
    }
}
