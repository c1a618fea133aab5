//! Every limit in one place. A limit that is not written down is a limit
//! that an attacker or a busy sale day finds for us.

/// Largest frame accepted by default (the length prefix is checked before
/// any allocation; larger frames are refused and the connection closed).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
/// Highest `--max-frame-bytes` accepted: a full commit batch of such
/// frames must still fit one log frame (a u32 length; asserted below).
pub const MAX_FRAME_BYTES_CEILING: usize = 256 * 1024;
/// Lowest `--max-frame-bytes` accepted: every well-formed request fits.
pub const MIN_FRAME_BYTES: usize = 1024;
/// Largest frame the daemon writes, whatever `--max-frame-bytes` (which
/// bounds what it reads) says: every answer is kept within the frame that
/// clients read (the default limit), so a low setting never cuts an
/// export chunk or a report, and a high one never sends a client a frame
/// it refuses. An answer that would still not fit closes its connection
/// (logged) rather than leave the connection applying requests it cannot
/// answer; the till then asks the status of what it sent.
pub const MAX_ANSWER_FRAME_BYTES: usize = DEFAULT_MAX_FRAME_BYTES;
/// Cards one `FindCard` answer lists: a phone shared by more is refused
/// (`LIMIT_EXCEEDED`) rather than answered past the frame limit. A card
/// number takes 21 bytes in the answer.
pub const MAX_FOUND_CARDS: usize = 1_000;
const _: () = assert!(MAX_FOUND_CARDS * 24 + 1024 <= MAX_ANSWER_FRAME_BYTES);
/// Largest amount of money in one operation, in minor units
/// (10,000,000.00 in a currency with two decimals).
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000;
/// Largest balance a card may hold (paid + bonus), in minor units.
pub const MAX_BALANCE_MINOR: i64 = 100_000_000_000;
/// Shortest validity rule for newly issued cards, in days: anonymous
/// cards stay valid at least three years (MOFCOM Order No. 9 of 2012),
/// and every card is issued anonymous. 3 × 365 + one leap day.
pub const MIN_CARD_VALIDITY_DAYS: u32 = 1_096;
/// Longest validity rule, in days (100 years).
pub const MAX_CARD_VALIDITY_DAYS: u32 = 36_525;
/// Latest expiry the owner may set (Unix ms, the year 9999 in UTC).
pub const MAX_EXPIRES_MS: i64 = 253_402_300_799_000;
/// Key rotations per brand (owner, terminal re-keys, server): each
/// retired key is remembered so that it never signs or enrols again.
pub const MAX_RETIRED_KEYS: usize = 10_000;
/// Largest points total on a card and largest single points redemption.
pub const MAX_POINTS: i64 = 1_000_000_000_000;
/// Text fields (operator, names, labels, reasons), in bytes.
pub const MAX_TEXT_BYTES: usize = 64;
/// The promotion line printed on receipts, in bytes.
pub const MAX_PROMOTION_BYTES: usize = 200;
/// Rules: bonus tiers and member tiers.
pub const MAX_RULE_TIERS: usize = 16;
/// Top-up bonus in basis points of the amount (10000 = +100%).
pub const MAX_BONUS_BPS: u32 = 10_000;
/// Points multiplier in thousandths (100x).
pub const MAX_MULTIPLIER_MILLI: u32 = 100_000;
/// Points per unit of currency spent, before multipliers.
pub const MAX_POINTS_PER_UNIT: i64 = 1_000;
/// Stores per brand.
pub const MAX_STORES_PER_BRAND: usize = 10_000;
/// Terminals per brand.
pub const MAX_TERMINALS_PER_BRAND: usize = 100_000;
/// Cards per brand.
pub const MAX_CARDS_PER_BRAND: usize = 50_000_000;
/// Brands per daemon (each has its own chain and writer task).
pub const MAX_BRANDS: usize = 10_000;
/// Highest brand id: brand ids are five digits inside card numbers.
pub const MAX_BRAND_ID: u32 = 99_999;
/// Requests one connection may have in flight (pipelined) at once. The
/// server holds one permit per request from the moment it is read until
/// its answer is handed to the socket (twice this many, as slack for a
/// client that sends its next request the moment it reads an answer), so
/// this also bounds what waits in the verifier's and the brands' writer
/// queues: at most 2 x this x MAX_CONNECTIONS requests.
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 64;
/// Concurrent connections accepted; further ones are closed at once. The
/// slots are split three ways so that no kind of client takes another's:
/// connections still signing on (at most [`MAX_PENDING_SIGN_ONS`]),
/// signed-on sessions of any key (the rest, less the owners' reserve) and
/// the owners' reserve ([`DEFAULT_OWNER_RESERVED_CONNECTIONS`]).
pub const MAX_CONNECTIONS: usize = 10_000;
/// Connections that have not finished sign-on yet. Nobody is known before
/// the proof, so these slots are shared by all comers; each is held for at
/// most [`SIGN_ON_TIMEOUT_SECS`] and none of them counts against a
/// signed-on session's slot.
pub const MAX_PENDING_SIGN_ONS: usize = 1_000;
/// Signed-on sessions of one terminal key. A till needs one or two (a
/// second one while a dead one times out); thousands are an attack.
pub const DEFAULT_CONNECTIONS_PER_TERMINAL: usize = 8;
/// Signed-on sessions of one owner key: a console, a few admin commands
/// and an audit export at once.
pub const DEFAULT_CONNECTIONS_PER_OWNER: usize = 8;
/// Signed-on terminal sessions of one brand, all its tills together: a
/// brand with hundreds of tills fits, and a brand whose many tills were
/// stolen still leaves the rest of the daemon to the other brands. Owner
/// sessions do not count here, so stolen tills cannot lock out their own
/// owner.
pub const DEFAULT_CONNECTIONS_PER_BRAND: usize = 2_000;
/// Slots only owner sessions may use, once every ordinary slot is taken:
/// an owner can always sign on to revoke a stolen till. One stolen owner
/// key holds at most [`DEFAULT_CONNECTIONS_PER_OWNER`] of them.
pub const DEFAULT_OWNER_RESERVED_CONNECTIONS: usize = 500;
/// Concurrent audit streams (exports, consistency proofs) of one key. Each
/// holds a thread of its own while it runs, so these are counted tightly.
pub const DEFAULT_AUDIT_STREAMS_PER_KEY: usize = 2;
/// Concurrent audit streams of one brand, all its keys together.
pub const DEFAULT_AUDIT_STREAMS_PER_BRAND: usize = 2;
/// Concurrent audit streams in the whole daemon: also the most threads
/// audit work can ever hold (the commit path has threads of its own).
pub const DEFAULT_AUDIT_STREAMS: usize = 8;
/// Bytes per second all audit streams of the daemon together may send, in
/// MiB (the default; `cardd serve --audit-mib-per-sec`). Export data is
/// copied through the same cores and tokio workers as tills' answers: a
/// reader that takes everything at once (or an unread stream filling its
/// socket buffers) would otherwise take them in bursts. 64 MiB/s is far
/// more than a verifier replays (a 10M-record export streams in about a
/// minute) and a small share of a core.
pub const DEFAULT_AUDIT_MIB_PER_SEC: u32 = 64;
/// Most an audit stream may send at once ahead of the pace, in KiB: a few
/// export chunks, so that pacing costs no latency to a lone reader.
pub const AUDIT_BURST_KIB: u32 = 256;
/// An audit stream whose reader takes no chunk for this long is stopped
/// and its connection closed (the default; `cardd serve
/// --audit-stall-secs`): a reader that stalls cannot hold a stream slot, a
/// thread or the chunks queued for it for longer.
pub const AUDIT_STALL_TIMEOUT_SECS: u64 = 30;
/// After a session is revoked, how long its answers already in flight may
/// take to reach the socket before the connection is cut anyway.
pub const REVOKED_DRAIN_MILLIS: u64 = 200;
/// Requests applied in one group commit (one sled batch, one flush).
pub const MAX_COMMIT_BATCH: usize = 2_048;
/// Batches a brand's writer applies ahead of the flush in progress. With 1,
/// memory is at most two batches ahead of disk (one flushing, one applied
/// and waiting), enough to apply while the disk flushes; more would only
/// cut the queue into smaller batches (fewer requests per flush) and add
/// batches that a failed commit must refuse.
pub const COMMIT_PIPELINE_DEPTH: usize = 1;
/// A client must finish sign-on within this time.
pub const SIGN_ON_TIMEOUT_SECS: u64 = 10;
/// A signed-on connection with no frame for this long is closed.
pub const IDLE_TIMEOUT_SECS: u64 = 600;
/// A connection whose peer takes none of an answer for this long is closed
/// (the default; `cardd serve --write-timeout-secs`): each write to the
/// socket (one answer frame plus at most the write buffer's 8 KiB, or the
/// flush of a batch) must be done within it. Without it a client that
/// stops reading keeps its connection slot, its session or sign-on slot and
/// the answers queued for it for as long as it likes, keyless too (an echo
/// is answered before sign-on).
pub const WRITE_TIMEOUT_SECS: u64 = 30;
/// sled's page cache (its own default is 1 GiB): the ledger is appended
/// and read back mostly at start-up, so a small cache costs little.
pub const SLED_CACHE_BYTES: u64 = 128 * 1024 * 1024;
/// Sign-on failures (unknown key, bad proof, bad version) from one address
/// per minute before that address is refused for a minute.
pub const DEFAULT_SIGN_ON_FAILURES_PER_MINUTE: u32 = 10;
/// Not-found (and other-brand) card answers and wrong PINs to one
/// terminal, or to one address, per minute before it is refused for a
/// minute: card-number and PIN probing from a stolen till is slowed to a
/// crawl.
pub const DEFAULT_CARD_MISSES_PER_MINUTE: u32 = 20;
/// Requests with a signature that does not verify one connection may send
/// before it is closed (each also counts as a sign-on failure of its
/// address). A till's signatures never fail unless it is broken; every
/// bad one makes the verifier check its whole batch, other tills' requests
/// included, one signature at a time (~2.5 times the cost), so a key must
/// not be able to send them at will. Before the limit's verdict comes,
/// a connection may have at most its in-flight bound more checked.
pub const MAX_BAD_SIGNATURES_PER_CONNECTION: u32 = 8;
/// How long a blocked address or terminal waits.
pub const RATE_LIMIT_COOLDOWN_SECS: u64 = 60;
/// Addresses and terminals the guard tracks at once (oldest forgotten first).
pub const MAX_GUARD_ENTRIES: usize = 100_000;
/// Echo payloads.
pub const MAX_ECHO_BYTES: usize = 1_024;
/// Transaction ids remembered per signer (terminal or owner) for
/// idempotency, status queries and reversals: the newest this many. An id
/// at or below the highest one forgotten is refused (`TXN_TOO_OLD`), never
/// applied, so a forgotten id can never be applied twice. A till sends a
/// few hundred a day; this is weeks of one.
pub const TXN_WINDOW_PER_SIGNER: usize = 4_096;
/// Tombstones kept per signer after they leave the txn window, until the
/// signer's "forgotten up to" mark passes their ids: a late original of a
/// reversed id is then refused however late it comes. A till that numbers
/// upwards has at most one or two such at a time; beyond this many (a till
/// reversing ids it never sent) the highest id's tombstone is dropped.
pub const MAX_TOMBSTONES_AHEAD: usize = 64;
/// How long a purchase can be refunded (and a money record reversed):
/// 90 days, measured on the records' server time.
pub const REFUND_WINDOW_MS: i64 = 90 * 86_400_000;
/// Money records kept refundable per brand, newest first, whatever their
/// age: the bound on that part of memory (~130 bytes each) when a brand
/// writes more than this within the refund window (over 22,000 money
/// records a day). Older ones answer `ORIGINAL_EXPIRED`.
pub const MAX_REFUNDABLE_RECORDS: usize = 2_000_000;
/// A brand's state is snapshotted (signed, to `DATA/snapshots/`) every
/// this many records, so that a restart replays at most this many records
/// after loading the snapshot, instead of the whole chain.
pub const SNAPSHOT_EVERY_RECORDS: u64 = 500_000;
/// Largest snapshot file read at start-up.
pub const MAX_SNAPSHOT_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// A brand's log starts a new segment file when the current one would pass
/// this size: recovery reads the newest segment whole (checking every
/// frame's CRC), older ones by their frame tables' headers only.
pub const LOG_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Graceful shutdown (SIGTERM, SIGINT): how long connections may take to
/// receive the answers to what they sent before the signal, and the
/// brands' writers to make their last batches durable, before the daemon
/// exits anyway. Nothing acknowledged is lost past it (every answer follows
/// its fsync); what was still unanswered is for the tills to ask about
/// (their txn status) after the restart. Below systemd's default stop
/// timeout (90 s), so the unit never needs SIGKILL.
pub const SHUTDOWN_GRACE_SECS: u64 = 20;
/// The HTTP listener (`--http-listen`): connections open at once; further
/// ones are closed at once.
pub const HTTP_MAX_CONNECTIONS: usize = 64;
/// The HTTP listener: a request's headers must arrive within this time.
pub const HTTP_HEADER_TIMEOUT_SECS: u64 = 5;
/// The HTTP listener: one connection's whole life (keep-alive included).
pub const HTTP_CONNECTION_SECS: u64 = 60;
/// The HTTP listener: hyper's read buffer, and so the most header bytes
/// one request may send (over it: 431 and the connection closed).
pub const HTTP_MAX_HEADER_BYTES: usize = 16 * 1024;
/// A web login link (`WebLogin`) is valid this long, and only once.
pub const WEB_LOGIN_TOKEN_SECS: u64 = 600;
/// Unused web login links held at once, all brands together: over it,
/// `WebLogin` is refused (`QUOTA_EXCEEDED`) until links are used or expire.
pub const WEB_MAX_PENDING_LOGINS: usize = 1_024;
/// Links one key may ask for within `WEB_LOGIN_TOKEN_SECS` (`RATE_LIMITED`
/// past it): a leaked owner console cannot flood the table.
pub const WEB_LINKS_PER_KEY: u32 = 10;
/// Web sessions open at once, all brands together: a link opened past it
/// shows the login page with "too many sessions".
pub const WEB_MAX_SESSIONS: usize = 1_024;
/// Unused web login links and open sessions of one brand at once (each):
/// one brand's hundreds of read keys cannot fill the tables that every
/// brand's owners share (it would take 16 brands at their cap).
pub const WEB_MAX_PER_BRAND: usize = 64;
/// A web session ends this long after its login at the latest...
pub const WEB_SESSION_SECS: u64 = 8 * 3600;
/// ...or once unused this long.
pub const WEB_SESSION_IDLE_SECS: u64 = 30 * 60;
/// Web pages read at once, all sessions together: each read runs on its
/// brand's writer between batches (a members page passes over every
/// card), so the web page never takes more of the machine than this.
pub const WEB_READS_AT_ONCE: usize = 2;
/// Of those, one brand's at once (its sessions together): one brand's
/// read keys or scripts cannot take every turn, and the web page never
/// holds more of one brand's writer than this. A brand's further pages
/// wait on its own share, not in the queue every brand shares.
pub const WEB_READS_PER_BRAND: usize = 1;
/// How long a page waits for its turn (its brand's share, then one of
/// all brands') before answering 503.
pub const WEB_READ_WAIT_SECS: u64 = 10;
/// HTTP connections one brand's sessions hold at once, counted from the
/// first request that shows a session of the brand: past it, that request
/// is answered 503 and its connection closed, so one brand's signed-in
/// sessions cannot keep every one of `HTTP_MAX_CONNECTIONS` open. A
/// connection that shows no session counts against
/// `HTTP_MAX_CONNECTIONS` only: anyone who can reach the listener can
/// still hold those (keep the listener on loopback or a management
/// network, docs/security.md).
pub const WEB_CONNECTIONS_PER_BRAND: usize = 16;
/// Request bodies on the web port: the page has no writes (logout's form is
/// empty, the sign-in form two 64-digit fields), so anything larger is
/// refused (413) unread.
pub const WEB_MAX_BODY_BYTES: u64 = 1_024;
const _: () = assert!(WEB_SESSION_IDLE_SECS <= WEB_SESSION_SECS);
const _: () = assert!(WEB_LINKS_PER_KEY as usize <= WEB_MAX_PER_BRAND);
const _: () = assert!(WEB_MAX_PER_BRAND <= WEB_MAX_PENDING_LOGINS);
const _: () = assert!(WEB_MAX_PER_BRAND <= WEB_MAX_SESSIONS);
const _: () = assert!(
    WEB_READS_PER_BRAND < WEB_READS_AT_ONCE,
    "a brand holding its whole share leaves a read for another brand"
);
const _: () = assert!(
    WEB_CONNECTIONS_PER_BRAND < HTTP_MAX_CONNECTIONS,
    "a brand holding its whole share leaves connections for another brand"
);
const _: () = assert!("token=&check=".len() as u64 + 2 * 64 <= WEB_MAX_BODY_BYTES);

// Relations between limits, checked when the crate compiles.
const _: () = assert!(
    MAX_AMOUNT_MINOR <= MAX_BALANCE_MINOR,
    "one load must fit a card"
);
// Paid plus bonus plus one more amount is summed in i64 before any check.
const _: () = assert!(
    MAX_BALANCE_MINOR < i64::MAX / 4,
    "balance sums cannot overflow"
);
const _: () = assert!(MAX_POINTS < i64::MAX / 4, "points sums cannot overflow");
const _: () = assert!(MAX_BRANDS <= MAX_BRAND_ID as usize, "every brand has an id");
const _: () = assert!(SNAPSHOT_EVERY_RECORDS > 0);
const _: () = assert!(COMMIT_PIPELINE_DEPTH >= 1);
// A commit's frame length is a u32: a full batch of the largest frames
// (each record holds its request) stays far below 4 GiB.
const _: () = assert!(
    (MAX_COMMIT_BATCH as u64) * (DEFAULT_MAX_FRAME_BYTES as u64) * 4 < u32::MAX as u64,
    "a full commit fits one log frame"
);
const _: () = assert!(
    (MAX_COMMIT_BATCH as u64) * (MAX_FRAME_BYTES_CEILING as u64) * 4 < u32::MAX as u64,
    "a full commit of the largest frames allowed fits one log frame"
);
const _: () = assert!(MIN_FRAME_BYTES <= DEFAULT_MAX_FRAME_BYTES);
const _: () = assert!(DEFAULT_MAX_FRAME_BYTES <= MAX_FRAME_BYTES_CEILING);
const _: () = assert!(SHUTDOWN_GRACE_SECS < 90, "inside systemd's stop timeout");
const _: () = assert!(HTTP_HEADER_TIMEOUT_SECS < HTTP_CONNECTION_SECS);
const _: () = assert!(
    LOG_SEGMENT_BYTES >= 1024 * 1024,
    "segments hold many commits"
);
const _: () = assert!(TXN_WINDOW_PER_SIGNER >= MAX_IN_FLIGHT_PER_CONNECTION);
const _: () = assert!(
    MAX_PENDING_SIGN_ONS + DEFAULT_OWNER_RESERVED_CONNECTIONS < MAX_CONNECTIONS,
    "signed-on sessions have slots of their own"
);
const _: () = assert!(DEFAULT_AUDIT_STREAMS_PER_KEY <= DEFAULT_AUDIT_STREAMS);

/// An owner load's or a till sale's reference (order or invoice number),
/// in bytes of printable ASCII.
pub const MAX_REFERENCE_BYTES: usize = 64;
/// Cards one `cardd admin issue-cards` run may issue. Each card takes two
/// owner transaction ids (issue, load); a re-run after an interruption
/// finds them as replays only while they are within the owner's window, so
/// a run uses at most half of it, leaving the other half for the owner's
/// other work in between.
pub const MAX_CARDS_PER_ISSUE_RUN: usize = 1_000;
const _: () = assert!(2 * MAX_CARDS_PER_ISSUE_RUN <= TXN_WINDOW_PER_SIGNER / 2);

/// Settlement lots a card holds at once: value from this many stores of
/// issue. A load from yet another store is refused until one is spent
/// (same-store loads join their lot, so a card loaded at its usual few
/// stores never meets it). Value given back (refund, reversal) is never
/// refused for it: a card may then hold more, one lot per store at most.
pub const MAX_LOTS_PER_CARD: usize = 16;
/// Days of per-day books (tallies, settlement, liability changes) kept,
/// counted back from the newest record's day: a year and its same
/// weekday, plus slack. Older days are forgotten on the records' time.
pub const MAX_BOOK_DAYS: i32 = 400;
/// Operator (cashier) names tallied apart per brand; later names are
/// tallied under the last one kept.
pub const MAX_OPERATORS_PER_BRAND: usize = 10_000;
// Liability per store of issue is an i64 sum of card balances.
const _: () = assert!(
    (MAX_CARDS_PER_BRAND as i64) < i64::MAX / MAX_BALANCE_MINOR,
    "liability sums fit i64"
);
/// Rows of one report section that lists cards (dormant, cards): the
/// largest first or the next page; a summary row counts them all.
pub const MAX_REPORT_ROWS: usize = 500;
/// Encoded size of a report reply, below the frame limit with room for the
/// reply's other fields: rows past it are cut (the reply says so).
pub const MAX_REPORT_BYTES: usize = MAX_ANSWER_FRAME_BYTES - 4 * 1024;
/// Records one activity page examines (read from storage in sequence
/// order): the bound on a page's cost, whatever the ledger's length.
pub const MAX_ACTIVITY_SCAN: usize = 100_000;
/// Rows of one activity page (each ~150 bytes; a page of longer rows ends
/// earlier, at `MAX_REPORT_BYTES`, and the next page goes on).
pub const MAX_ACTIVITY_ROWS: usize = 300;
const _: () = assert!(MAX_ACTIVITY_ROWS * 150 < MAX_REPORT_BYTES);
/// Read-only keys (auditors, store managers) per brand, removed ones
/// included.
pub const MAX_READ_KEYS_PER_BRAND: usize = 1_000;
/// A holder's name (`HolderData.name`), in bytes of UTF-8.
pub const MAX_HOLDER_NAME_BYTES: usize = 64;
/// A holder's phone: an optional "+" then this many digits at most.
pub const MAX_PHONE_DIGITS: usize = 20;
/// ... and at least this many.
pub const MIN_PHONE_DIGITS: usize = 5;
/// Holders kept per brand by the server's holder store (it is rewritten
/// whole on each change, so its size bounds the cost of a change).
pub const MAX_HOLDERS_PER_BRAND: usize = 200_000;
/// A brand's holder-store calls (`HolderData`, `FindCard`, `SetHolder`'s
/// check, `EraseHolder`) running or waiting at once; more are refused
/// `SERVER_BUSY`. Each holds one of the blocking threads PIN checks of
/// every brand also use.
pub const MAX_HOLDER_CALLS_PER_BRAND: usize = 16;
/// PIN digits (ISO 9564: 4 to 12).
pub const MIN_PIN_DIGITS: usize = 4;
/// Longest PIN.
pub const MAX_PIN_DIGITS: usize = 12;
/// A sealed PIN block, in bytes (48 bytes of sealed-box overhead, the
/// binding and the PIN): longer is refused before it is opened.
pub const MAX_PIN_BLOCK_BYTES: usize = 256;
/// Wrong PIN tries in a row before the card is locked for PIN operations.
pub const MAX_WRONG_PIN_TRIES: u32 = 5;
/// Argon2id checks running at once in the daemon (each takes a core and
/// ~19 MiB for tens of milliseconds); more wait their turn.
pub const MAX_PIN_CHECKS_AT_ONCE: usize = 2;
/// PIN checks waiting for a turn, daemon-wide; beyond it SERVER_BUSY.
pub const MAX_PIN_CHECKS_QUEUED: usize = 256;
/// Argon2id memory cost of a PIN hash, in KiB (OWASP's 19 MiB, t = 2).
pub const PIN_HASH_MEMORY_KIB: u32 = 19 * 1024;
/// Argon2id passes over that memory.
pub const PIN_HASH_PASSES: u32 = 2;

/// Campaigns in one set of rules. With the tier multiplier and each
/// campaign at most `MAX_MULTIPLIER_MILLI`, the exact points of a purchase
/// are computed in i128 (`rules::earned`) without overflow.
pub const MAX_CAMPAIGNS: usize = 8;
/// Stores one campaign or the store promotion lines may name.
pub const MAX_CAMPAIGN_STORES: usize = 64;
/// Days after which points may be set to expire, at most (ten years).
pub const MAX_POINTS_EXPIRE_DAYS: u32 = 3_650;
/// Points lots (points by expiry) one card holds. An award that would make
/// one more joins the newest lot, which keeps the later expiry of the two:
/// a point may live longer than promised, never shorter.
pub const MAX_POINT_LOTS_PER_CARD: usize = 32;
/// A tier's rolling window, at most (a year and a day): also how many
/// days of spend a card keeps, one entry per day with a purchase.
pub const MAX_TIER_WINDOW_DAYS: u32 = 366;
/// Points that pay one unit of a bill in `points_redemption`, at most.
pub const MAX_REDEMPTION_POINTS: i64 = 1_000_000;
// rules::earned keeps a remainder below 10^(4 + 3 * (campaigns + 1))
// (exponent <= 4) and multiplies it by at most 1000 + a multiplier.
const _: () = assert!(
    10i128.pow(4 + 3 * (MAX_CAMPAIGNS as u32 + 1)) * (1_000 + MAX_MULTIPLIER_MILLI as i128)
        < i128::MAX / 2,
    "the exact points of a purchase fit i128"
);
