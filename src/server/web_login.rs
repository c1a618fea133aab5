//! `WebLogin`: a single-use link to the owner's web page for an owner,
//! auditor or store-manager key (docs/web.md). No record is written: the
//! link lives in the daemon's memory (`web::Logins`). The signer's key is
//! checked against the brand's state on its writer, like a report, and
//! the link is made only when the answer is released (after every batch
//! before it is durable), so a key whose removal is durable gets none.
use std::sync::Arc;

use super::reply::ReplyTo;
use super::sign_on::Session;
use super::writer::Deliver;
use super::Shared;
use crate::error::Refusal;
use crate::pb::{self, ErrorCode as E};
use crate::state::{BrandState, Principal};
use crate::web::Grant;

/// Answers a verified `WebLogin` through the brand's writer.
pub(super) fn web_login(shared: Arc<Shared>, session: &Session, req: &pb::Request, reply: ReplyTo) {
    if req.brand_id != session.brand_id {
        return reply.send(Err(Refusal::new(
            E::WrongBrand,
            "request names another brand",
        )));
    }
    if session.brand.is_halted() {
        return reply.send(Err(Refusal::new(
            E::StorageFailure,
            "this brand was stopped: its ledger on disk was found changed (see the daemon's log)",
        )));
    }
    let grant = Grant {
        brand: session.brand_id,
        principal: session.principal,
        key: session.key_bytes,
    };
    let read = Box::new(move |state: &BrandState| -> Deliver {
        let allowed = may_log_in(state, grant.principal, &grant.key);
        Box::new(move || {
            let answer = allowed.and_then(|()| shared.web.issue(grant));
            let (brand, principal) = (grant.brand, grant.principal);
            match &answer {
                Ok(_) => tracing::info!(brand, ?principal, "web login link issued"),
                Err(r) => {
                    tracing::info!(brand, ?principal, code = ?r.code, "web login link refused")
                }
            }
            let answer = answer.map(|link| pb::Reply {
                detail: Some(pb::reply::Detail::WebLogin(pb::WebLoginLink {
                    token: link.token,
                    expires_ms: link.expires_ms,
                    role: role(principal) as i32,
                    store_id: grant.scope().unwrap_or(0),
                })),
                ..Default::default()
            });
            reply.send(answer);
        })
    });
    // A writer stopped since (shutdown) drops `read` and with it `reply`:
    // the request's permit is freed unanswered and the connection closes
    // with the daemon, as for the other requests in flight then.
    let _ = session.brand.read(read);
}

/// The roles that read the books: the owner and live read-only keys.
fn may_log_in(state: &BrandState, principal: Principal, key: &[u8; 32]) -> Result<(), Refusal> {
    match principal {
        // A rotated-away owner key that still has a session gets no link.
        Principal::Owner if state.owner_key != *key => Err(Refusal::new(
            E::UnknownKey,
            "this owner key was rotated away",
        )),
        Principal::Owner => Ok(()),
        Principal::Auditor(id) | Principal::StoreManager(id, _) => {
            if state
                .read_keys
                .get(&id)
                .is_none_or(|k| k.removed || k.public_key != *key)
            {
                Err(Refusal::new(
                    E::UnknownKey,
                    "this read-only key was removed by the owner",
                ))
            } else {
                Ok(())
            }
        }
        _ => Err(Refusal::new(
            E::WrongRole,
            "web login needs the owner key or a read-only key",
        )),
    }
}

fn role(principal: Principal) -> pb::Role {
    match principal {
        Principal::Auditor(_) => pb::Role::Auditor,
        Principal::StoreManager(..) => pb::Role::StoreManager,
        _ => pb::Role::Owner,
    }
}
