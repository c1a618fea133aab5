//! The table of hostile inputs and what the daemon must answer to each.
use super::*;

pub(crate) fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Protobuf that does not decode: field 1 with the invalid wire type 7,
/// then a length-delimited field 2 that claims more bytes than follow.
pub(crate) const BAD_PROTOBUF: &[&[u8]] = &[
    b"\x0f\xff\xff",
    b"\x12\x7f\x01\x02",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
];

/// The table. `others` are enrolled keys other than the attacker's (the
/// victim's terminal, the owner): their signatures are valid, but not for
/// the attacker's session.
pub(crate) fn cases(
    brand: u32,
    attacker: &SigningKey,
    others: &[SigningKey],
    card: &str,
) -> Vec<Case> {
    let mut v = Vec::new();
    let mut txn = 5_000_000u64;
    let mut next_txn = || {
        txn += 1;
        txn
    };

    // Raw garbage, not framed: the first four bytes are a random length.
    for seed in 1..=4u64 {
        for len in [1usize, 3, 4, 5, 17, 256, 4096, 70_000] {
            let mut c = case(
                format!("garbage seed {seed} len {len}"),
                Who::Anonymous,
                random_bytes(seed, len),
                Expect::NoSuccess,
            );
            c.half_close = true;
            v.push(c);
        }
    }
    // Random bodies in well-formed frames, before and after sign-on.
    for seed in 11..=14u64 {
        for len in [1usize, 2, 7, 64, 1000, 60_000] {
            let mut c = case(
                format!("framed garbage seed {seed} len {len}"),
                Who::Anonymous,
                frame(&random_bytes(seed, len)),
                Expect::NoSuccess,
            );
            c.half_close = true;
            v.push(c);
            let mut c = case(
                format!("framed garbage after sign-on seed {seed} len {len}"),
                Who::SignedOn,
                frame(&random_bytes(seed, len)),
                Expect::NoSuccess,
            );
            c.half_close = true;
            v.push(c);
        }
    }
    // Length prefixes over the limit: refused on the header alone.
    for len in [u32::MAX, 0x8000_0000, MAX_FRAME as u32 + 1] {
        v.push(case(
            format!("length prefix {len:#x}"),
            Who::Anonymous,
            len.to_be_bytes().to_vec(),
            Expect::Close(E::FrameTooLarge),
        ));
        v.push(case(
            format!("length prefix {len:#x} after sign-on"),
            Who::SignedOn,
            len.to_be_bytes().to_vec(),
            Expect::Close(E::FrameTooLarge),
        ));
    }
    // Truncated frames: the prefix promises more than arrives, then EOF.
    for (promised, sent) in [(100usize, 10usize), (MAX_FRAME, 1000), (5, 0)] {
        let mut bytes = (promised as u32).to_be_bytes().to_vec();
        bytes.extend(random_bytes(promised as u64, sent));
        let mut c = case(
            format!("truncated frame {sent} of {promised}"),
            Who::Anonymous,
            bytes,
            Expect::SilentClose,
        );
        c.half_close = true;
        v.push(c);
    }
    let mut c = case(
        "truncated length prefix",
        Who::Anonymous,
        vec![0, 0],
        Expect::SilentClose,
    );
    c.half_close = true;
    v.push(c);
    // Frames that are not a ClientMessage.
    for (i, bad) in BAD_PROTOBUF.iter().enumerate() {
        v.push(case(
            format!("protobuf garbage {i}"),
            Who::Anonymous,
            frame(bad),
            Expect::Open(E::Malformed),
        ));
        v.push(case(
            format!("protobuf garbage {i} after sign-on"),
            Who::SignedOn,
            frame(bad),
            Expect::Open(E::Malformed),
        ));
    }
    v.push(case(
        "empty frame",
        Who::Anonymous,
        frame(&[]),
        Expect::Open(E::Malformed),
    ));
    let empty_with_id = ClientMessage {
        request_id: 7,
        body: None,
    }
    .encode_to_vec();
    v.push(case(
        "ClientMessage without a body",
        Who::Anonymous,
        frame(&empty_with_id),
        Expect::Open(E::Malformed),
    ));
    v.push(case(
        "ClientMessage without a body after sign-on",
        Who::SignedOn,
        frame(&empty_with_id),
        Expect::Open(E::Malformed),
    ));

    // Session order.
    let purchase_1 = request(brand, 4_000_000, purchase(card, 1));
    v.push(case(
        "signed request before sign-on",
        Who::Anonymous,
        signed_frame(attacker, 3, &purchase_1),
        Expect::Open(E::NotSignedOn),
    ));
    let mut bytes = msg(
        1,
        hello_raw(1, attacker.verifying_key().to_bytes().to_vec()),
    );
    bytes.extend(signed_frame(attacker, 3, &purchase_1));
    v.push(case(
        "signed request between hello and proof",
        Who::Anonymous,
        bytes,
        Expect::Open(E::NotSignedOn),
    ));
    let proof = Body::SignOnProof(pb::SignOnProof {
        signature: vec![0; 64],
    });
    v.push(case(
        "proof before hello",
        Who::Anonymous,
        msg(1, proof.clone()),
        Expect::Close(E::Malformed),
    ));
    let mut bytes = msg(
        1,
        hello_raw(1, attacker.verifying_key().to_bytes().to_vec()),
    );
    bytes.extend(msg(2, proof));
    v.push(case(
        "proof with a wrong signature",
        Who::Anonymous,
        bytes,
        Expect::Close(E::SignOnFailed),
    ));
    v.push(case(
        "hello after sign-on",
        Who::SignedOn,
        msg(
            3,
            hello_raw(1, attacker.verifying_key().to_bytes().to_vec()),
        ),
        Expect::Open(E::AlreadySignedOn),
    ));

    // Hello with bad keys or version.
    let short = attacker.verifying_key().to_bytes()[..31].to_vec();
    v.push(case(
        "hello with a 31-byte key",
        Who::Anonymous,
        msg(1, hello_raw(1, short)),
        Expect::Close(E::UnknownKey),
    ));
    v.push(case(
        "hello with a 33-byte key",
        Who::Anonymous,
        msg(1, hello_raw(1, vec![7; 33])),
        Expect::Close(E::UnknownKey),
    ));
    v.push(case(
        "hello with no key",
        Who::Anonymous,
        msg(1, hello_raw(1, vec![])),
        Expect::Close(E::UnknownKey),
    ));
    let unknown = generate_key().verifying_key().to_bytes().to_vec();
    v.push(case(
        "hello with an unknown key",
        Who::Anonymous,
        msg(1, hello_raw(1, unknown)),
        Expect::Close(E::UnknownKey),
    ));
    let mut identity = vec![0u8; 32];
    identity[0] = 1; // the identity point: a weak key
    v.push(case(
        "hello with a weak key",
        Who::Anonymous,
        msg(1, hello_raw(1, identity)),
        Expect::Close(E::UnknownKey),
    ));
    for version in [0u32, 2, u32::MAX] {
        let key = attacker.verifying_key().to_bytes().to_vec();
        v.push(case(
            format!("hello with protocol version {version}"),
            Who::Anonymous,
            msg(1, hello_raw(version, key)),
            Expect::Close(E::UnsupportedVersion),
        ));
    }

    // Signed-on requests whose content is hostile.
    for (i, bad) in BAD_PROTOBUF.iter().enumerate() {
        let bytes = signed_frame_raw(attacker, 9, bad.to_vec());
        v.push(case(
            format!("signed undecodable request {i}"),
            Who::SignedOn,
            bytes,
            Expect::Open(E::Malformed),
        ));
    }
    for seed in 21..=24u64 {
        let bytes = signed_frame_raw(attacker, 9, random_bytes(seed, 40 + seed as usize));
        v.push(case(
            format!("signed random request seed {seed}"),
            Who::SignedOn,
            bytes,
            Expect::AnyError,
        ));
    }
    for amount in [
        -1i64,
        0,
        i64::MAX,
        i64::MIN,
        cardd::limits::MAX_AMOUNT_MINOR + 1,
    ] {
        let p = request(brand, next_txn(), purchase(card, amount));
        v.push(case(
            format!("purchase of {amount}"),
            Who::SignedOn,
            signed_frame(attacker, 9, &p),
            Expect::Open(E::AmountOutOfRange),
        ));
        let t = request(brand, next_txn(), top_up(card, amount));
        v.push(case(
            format!("top-up of {amount}"),
            Who::SignedOn,
            signed_frame(attacker, 9, &t),
            Expect::Open(E::AmountOutOfRange),
        ));
        let r = request(
            brand,
            next_txn(),
            Op::Refund(pb::Refund {
                original_seq: 1,
                amount_minor: amount,
            }),
        );
        v.push(case(
            format!("refund of {amount}"),
            Who::SignedOn,
            signed_frame(attacker, 9, &r),
            Expect::Open(E::AmountOutOfRange),
        ));
    }
    let last = card.as_bytes()[card.len() - 1] - b'0';
    let bad_check = format!("{}{}", &card[..card.len() - 1], (last + 1) % 10);
    for bad_card in [
        bad_check.as_str(),
        "",
        "8",
        "not a card",
        &"9".repeat(19),
        &"8".repeat(4000),
    ] {
        let p = request(brand, next_txn(), purchase(bad_card, 1));
        v.push(case(
            format!("purchase on card {bad_card:.30}"),
            Who::SignedOn,
            signed_frame(attacker, 9, &p),
            Expect::Open(E::CardNotFound),
        ));
        let q = request(
            brand,
            0,
            Op::Inquiry(pb::Inquiry {
                card: bad_card.into(),
            }),
        );
        v.push(case(
            format!("inquiry on card {bad_card:.30}"),
            Who::SignedOn,
            signed_frame(attacker, 9, &q),
            Expect::Open(E::CardNotFound),
        ));
    }
    let p = request(brand, 0, purchase(card, 1));
    v.push(case(
        "purchase with txn_id 0",
        Who::SignedOn,
        signed_frame(attacker, 9, &p),
        Expect::Open(E::InvalidArgument),
    ));
    let t = request(brand, 0, top_up(card, 1));
    v.push(case(
        "top-up with txn_id 0",
        Who::SignedOn,
        signed_frame(attacker, 9, &t),
        Expect::Open(E::InvalidArgument),
    ));
    let mut p = request(brand, next_txn(), purchase(card, 1));
    p.operator = "x".repeat(10 * 1024);
    v.push(case(
        "operator of 10 KB",
        Who::SignedOn,
        signed_frame(attacker, 9, &p),
        Expect::Open(E::InvalidArgument),
    ));
    let mut p = request(brand, next_txn(), purchase(card, 1));
    p.operator = "cash\nier".into();
    v.push(case(
        "operator with a control character",
        Who::SignedOn,
        signed_frame(attacker, 9, &p),
        Expect::Open(E::InvalidArgument),
    ));
    let mut p = request(brand, next_txn(), purchase(card, 1));
    p.op = None;
    v.push(case(
        "request without an operation",
        Who::SignedOn,
        signed_frame(attacker, 9, &p),
        Expect::Open(E::InvalidArgument),
    ));
    for other in [0u32, brand + 1, u32::MAX] {
        let p = request(other, next_txn(), purchase(card, 1));
        v.push(case(
            format!("purchase naming brand {other}"),
            Who::SignedOn,
            signed_frame(attacker, 9, &p),
            Expect::Open(E::WrongBrand),
        ));
    }
    let s = request(
        brand,
        next_txn(),
        Op::CreateStore(pb::CreateStore {
            name: "rogue".into(),
        }),
    );
    v.push(case(
        "terminal creating a store",
        Who::SignedOn,
        signed_frame(attacker, 9, &s),
        Expect::Open(E::WrongRole),
    ));

    // Signatures that do not verify.
    let p = request(brand, next_txn(), purchase(card, 1));
    let bytes = p.encode_to_vec();
    let good = sign_request(attacker, &bytes);
    let bad_sigs: Vec<(&str, Vec<u8>)> = vec![
        ("63-byte signature", good[..63].to_vec()),
        ("65-byte signature", [good.as_slice(), &[0]].concat()),
        ("empty signature", vec![]),
        ("zero signature", vec![0; 64]),
        ("signature with a flipped bit", {
            let mut s = good.clone();
            s[10] ^= 1;
            s
        }),
        (
            "signature by another key",
            sign_request(&generate_key(), &bytes),
        ),
        (
            "signature over other bytes",
            sign_request(
                attacker,
                &request(brand, 1, purchase(card, 2)).encode_to_vec(),
            ),
        ),
        (
            "sign-on domain signature",
            attacker.sign(&bytes).to_bytes().to_vec(),
        ),
        ("signature with s not reduced", {
            // s + L is a malleated encoding of the same signature.
            let mut s = good.clone();
            add_group_order(&mut s[32..]);
            s
        }),
    ];
    for (what, sig) in bad_sigs {
        v.push(case(
            what,
            Who::SignedOn,
            msg(9, signed(bytes.clone(), sig)),
            Expect::Open(E::BadSignature),
        ));
    }
    // A request validly signed by another enrolled key, sent on the
    // attacker's session: the signature must be checked against the session.
    for (i, other) in others.iter().enumerate() {
        let p = request(brand, next_txn(), purchase(card, 1));
        v.push(case(
            format!("request signed by enrolled key {i}"),
            Who::SignedOn,
            signed_frame(other, 9, &p),
            Expect::Open(E::BadSignature),
        ));
    }

    // Echo is allowed before sign-on, but bounded.
    let long = Body::Echo(pb::Echo {
        payload: vec![b'e'; cardd::limits::MAX_ECHO_BYTES + 1],
    });
    v.push(case(
        "echo of MAX_ECHO_BYTES + 1",
        Who::Anonymous,
        msg(5, long),
        Expect::Open(E::InvalidArgument),
    ));
    v
}

/// Adds the ed25519 group order L to a little-endian 32-byte scalar.
pub(crate) fn add_group_order(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (b, l) in s.iter_mut().zip(L) {
        let sum = u16::from(*b) + u16::from(l) + carry;
        *b = sum as u8;
        carry = sum >> 8;
    }
}
