//! A client of the cardd protocol: sign-on and signed requests, one at a
//! time. Used by `terminal-sim`, `cardd admin` and the tests.
//!
//! The connection is plain TCP, or TLS over TCP when the daemon serves
//! with `--tls-cert`/`--tls-key` ([`Client::connect_tls`] with a
//! [`TlsClient`]). Either way the ed25519 sign-on and the request
//! signatures are the same: TLS adds confidentiality, the signatures stay
//! the authentication.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use futures::{SinkExt, StreamExt};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::codec::frame_codec;
use crate::crypto::{request_message, sign_on_message};
use crate::error::Refusal;
use crate::limits::DEFAULT_MAX_FRAME_BYTES;
use crate::pb::{
    self, client_message::Body, request::Op, server_message, ClientMessage, ServerMessage,
};
// The TLS set-up lives in `crate::tls` (shared with the server); this
// path stays for the binaries and tests that name it here.
pub use crate::tls::TlsClient;

/// The byte stream under a [`Client`]: plain TCP, or TLS over TCP.
pub enum ClientStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (rustls) over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => s.get_ref().0,
        }
    }

    /// True if this connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A client over plain TCP or TLS, as [`Client::connect_with`] makes.
pub type AnyClient = Client<ClientStream>;

/// Why a call did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused with an error code.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server said something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The refusal's code, if this is a refusal.
    pub fn code(&self) -> Option<pb::ErrorCode> {
        match self {
            ClientError::Refused(r) => Some(r.code),
            _ => None,
        }
    }
}

fn refusal(e: pb::Error) -> ClientError {
    ClientError::Refused(Refusal::new(
        pb::ErrorCode::try_from(e.code).unwrap_or_default(),
        e.message,
    ))
}

/// A signed-on connection over the stream `S`: a [`TcpStream`] from
/// [`Client::connect`], a [`ClientStream`] (plain or TLS) from
/// [`Client::connect_with`] and [`Client::connect_tls`].
pub struct Client<S = TcpStream> {
    framed: Framed<S, LengthDelimitedCodec>,
    key: SigningKey,
    next_request_id: u64,
    /// What the server said at sign-on.
    pub session: pb::SignOnOk,
    /// The server's public key, from the challenge.
    pub server_key: [u8; 32],
    /// The cashier recorded on each request.
    pub operator: String,
}

impl Client<TcpStream> {
    /// Connects over plain TCP and signs on with `key`.
    pub async fn connect(addr: impl ToSocketAddrs, key: SigningKey) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let framed = Framed::new(stream, frame_codec(DEFAULT_MAX_FRAME_BYTES));
        Client::sign_on(framed, key).await
    }
}

impl Client<ClientStream> {
    /// Connects over TLS with `tls` and signs on with `key`.
    pub async fn connect_tls(
        addr: impl ToSocketAddrs,
        key: SigningKey,
        tls: &TlsClient,
    ) -> Result<Self, ClientError> {
        Client::connect_with(addr, key, Some(tls)).await
    }

    /// Connects over TLS if `tls` is given, else over plain TCP, and signs
    /// on with `key`. A failed TLS handshake (an untrusted certificate, a
    /// daemon without TLS) is a [`ClientError::Io`].
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        key: SigningKey,
        tls: Option<&TlsClient>,
    ) -> Result<Self, ClientError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let stream = match tls {
            None => ClientStream::Plain(tcp),
            Some(tls) => {
                let s = tls.connect(tcp).await?;
                ClientStream::Tls(Box::new(s))
            }
        };
        let framed = Framed::new(stream, frame_codec(DEFAULT_MAX_FRAME_BYTES));
        Client::sign_on(framed, key).await
    }
}

/// A failed attempt to sign on to the daemon at `addr`: the address, what
/// failed, and a hint for the mistakes people make (nobody listening, TLS
/// on one side only).
#[derive(Debug, thiserror::Error)]
#[error("connecting to {addr}: {error}{hint}")]
pub struct ConnectError {
    /// The address as given.
    pub addr: String,
    /// What failed (a refusal of the sign-on is [`ClientError::Refused`]).
    pub error: ClientError,
    /// A sentence that says what to do, or nothing.
    pub hint: &'static str,
}

/// Connects to `addr` (over TLS when `tls` is given) and signs on with
/// `key`; a failure names the address and, where it can tell, says that
/// the port speaks TLS and the client does not, or the other way round.
pub async fn connect_to(
    addr: &str,
    key: SigningKey,
    tls: Option<&TlsClient>,
) -> Result<AnyClient, ConnectError> {
    Client::connect_with(addr, key, tls)
        .await
        .map_err(|error| ConnectError {
            addr: addr.to_string(),
            hint: connect_hint(&error, tls.is_some()),
            error,
        })
}

/// What a failed sign-on most likely means.
fn connect_hint(e: &ClientError, tls: bool) -> &'static str {
    let ClientError::Io(io) = e else { return "" };
    let text = io.to_string();
    if io.kind() == io::ErrorKind::ConnectionRefused {
        " (is the daemon running, and listening on this address?)"
    } else if !tls && text.contains("frame size too big") {
        // A TLS server answers a plain Hello with a TLS alert record, whose
        // first bytes read as a huge frame length.
        " (this port speaks TLS: give --tls-ca PEM, the certificate to trust)"
    } else if tls && (text.contains("InvalidContentType") || text.contains("corrupt message")) {
        // A plain server answers a ClientHello with a FRAME_TOO_LARGE frame,
        // which is not a TLS record.
        " (this port does not speak TLS: drop --tls-ca)"
    } else if tls && io.kind() == io::ErrorKind::UnexpectedEof {
        " (the daemon closed the connection during the TLS handshake: does this port speak TLS?)"
    } else {
        ""
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Challenge-response sign-on on a fresh connection.
    async fn sign_on(
        mut framed: Framed<S, LengthDelimitedCodec>,
        key: SigningKey,
    ) -> Result<Self, ClientError> {
        let hello = Body::Hello(pb::Hello {
            protocol_version: 1,
            public_key: key.verifying_key().to_bytes().to_vec(),
        });
        send(
            &mut framed,
            ClientMessage {
                request_id: 0,
                body: Some(hello),
            },
        )
        .await?;
        let challenge = match recv(&mut framed).await?.body {
            Some(server_message::Body::Challenge(c)) => c,
            Some(server_message::Body::Error(e)) => return Err(refusal(e)),
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected a challenge, got {other:?}"
                )))
            }
        };
        let server_key: [u8; 32] = challenge
            .server_public_key
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Protocol("server key is not 32 bytes".into()))?;
        let signature = key
            .sign(&sign_on_message(&challenge.nonce, &server_key))
            .to_bytes()
            .to_vec();
        send(
            &mut framed,
            ClientMessage {
                request_id: 0,
                body: Some(Body::SignOnProof(pb::SignOnProof { signature })),
            },
        )
        .await?;
        let session = match recv(&mut framed).await?.body {
            Some(server_message::Body::SignOnOk(ok)) => ok,
            Some(server_message::Body::Error(e)) => return Err(refusal(e)),
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected sign-on, got {other:?}"
                )))
            }
        };
        Ok(Client {
            framed,
            key,
            next_request_id: 1,
            session,
            server_key,
            operator: String::new(),
        })
    }

    /// A request for this session's brand with `txn_id` and `op`.
    pub fn request(&self, txn_id: u64, op: Op) -> pb::Request {
        let client_time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        pb::Request {
            txn_id,
            brand_id: self.session.brand_id,
            operator: self.operator.clone(),
            client_time_ms,
            want_proof: false,
            op: Some(op),
        }
    }

    /// Signs and sends `req`, and waits for its answer.
    pub async fn call(&mut self, req: &pb::Request) -> Result<pb::Reply, ClientError> {
        let bytes = req.encode_to_vec();
        let signature = self.key.sign(&request_message(&bytes)).to_bytes().to_vec();
        self.call_signed(bytes, signature).await
    }

    /// Seals `pin` for the request `txn_id` on `card` to the server's PIN
    /// key from sign-on (docs/security.md, "Personal data and PINs"): the
    /// block opens only for that request, signed by this client.
    pub fn pin_block(
        &self,
        txn_id: u64,
        card: &str,
        purpose: crate::pin::Purpose,
        pin: &str,
    ) -> Result<Vec<u8>, crate::pin::PinError> {
        let server: [u8; 32] = self
            .session
            .pin_public_key
            .as_slice()
            .try_into()
            .map_err(|_| crate::pin::PinError::NoServerKey)?;
        let signer = self.key.verifying_key().to_bytes();
        let binding = crate::pin::Binding {
            brand_id: self.session.brand_id,
            signer: &signer,
            txn_id,
            card,
            purpose,
        };
        crate::pin::seal(&server, &binding, pin)
    }

    /// Sends already-signed request bytes (e.g. a retry of exactly the same
    /// bytes) and waits for the answer.
    pub async fn call_signed(
        &mut self,
        request: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<pb::Reply, ClientError> {
        let body = Body::Signed(pb::SignedRequest { request, signature });
        match self.roundtrip(body).await? {
            server_message::Body::Reply(r) => Ok(r),
            server_message::Body::Error(e) => Err(refusal(e)),
            other => Err(ClientError::Protocol(format!(
                "expected a reply, got {other:?}"
            ))),
        }
    }

    /// Streams the brand's ledger export (owner only) into `out`; returns
    /// the bytes written.
    pub async fn export(&mut self, out: &mut impl std::io::Write) -> Result<u64, ClientError> {
        self.export_after(0, out).await
    }

    /// Like [`Client::export`], but only the records after tree size
    /// `after_size` and the checkpoints over them (an incremental backup;
    /// `ExportLedger.after_size` in the proto).
    pub async fn export_after(
        &mut self,
        after_size: u64,
        out: &mut impl std::io::Write,
    ) -> Result<u64, ClientError> {
        let req = self.request(0, Op::ExportLedger(pb::ExportLedger { after_size }));
        let bytes = req.encode_to_vec();
        let signature = self.key.sign(&request_message(&bytes)).to_bytes().to_vec();
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let body = Body::Signed(pb::SignedRequest {
            request: bytes,
            signature,
        });
        send(
            &mut self.framed,
            ClientMessage {
                request_id,
                body: Some(body),
            },
        )
        .await?;
        let mut written = 0u64;
        loop {
            match recv(&mut self.framed).await?.body {
                Some(server_message::Body::ExportChunk(c)) => {
                    out.write_all(&c.data)?;
                    written += c.data.len() as u64;
                    if c.last {
                        return Ok(written);
                    }
                }
                Some(server_message::Body::Error(e)) => return Err(refusal(e)),
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected export data, got {other:?}"
                    )))
                }
            }
        }
    }

    /// Asks for a consistency proof from `old_size` to `new_size` (0 = the
    /// newest checkpoint).
    pub async fn consistency_proof(
        &mut self,
        old_size: u64,
        new_size: u64,
    ) -> Result<pb::ConsistencyProof, ClientError> {
        let req = self.request(
            0,
            Op::ConsistencyProof(pb::GetConsistencyProof { old_size, new_size }),
        );
        self.call(&req)
            .await?
            .consistency
            .ok_or_else(|| ClientError::Protocol("no consistency proof".into()))
    }

    /// Echo (keep-alive).
    pub async fn echo(&mut self, payload: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        match self.roundtrip(Body::Echo(pb::Echo { payload })).await? {
            server_message::Body::Echo(e) => Ok(e.payload),
            server_message::Body::Error(e) => Err(refusal(e)),
            other => Err(ClientError::Protocol(format!(
                "expected echo, got {other:?}"
            ))),
        }
    }

    async fn roundtrip(&mut self, body: Body) -> Result<server_message::Body, ClientError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        send(
            &mut self.framed,
            ClientMessage {
                request_id,
                body: Some(body),
            },
        )
        .await?;
        let msg = recv(&mut self.framed).await?;
        if msg.request_id != request_id && msg.request_id != 0 {
            return Err(ClientError::Protocol(format!(
                "answer to {} while waiting for {request_id}",
                msg.request_id
            )));
        }
        msg.body
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))
    }

    /// The signing key (to sign requests sent by other means).
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The underlying framed stream, for tests that speak raw frames.
    pub fn framed(&mut self) -> &mut Framed<S, LengthDelimitedCodec> {
        &mut self.framed
    }
}

/// Sends one message as a frame (over a client's connection, or any raw
/// framed stream).
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, LengthDelimitedCodec>,
    msg: ClientMessage,
) -> Result<(), ClientError> {
    framed.send(bytes::Bytes::from(msg.encode_to_vec())).await?;
    Ok(())
}

/// Receives one frame and decodes it.
pub async fn recv<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, LengthDelimitedCodec>,
) -> Result<ServerMessage, ClientError> {
    let frame = framed
        .next()
        .await
        .ok_or_else(|| ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()))??;
    ServerMessage::decode(frame)
        .map_err(|e| ClientError::Protocol(format!("undecodable answer: {e}")))
}
