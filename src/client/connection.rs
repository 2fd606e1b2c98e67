//! One blocking connection to a node's client port (std TcpStream): encode a request, read
//! frames until its answer arrives. For the CLI, the playground and tests; the pipelined async
//! client comes with issue 5.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::proto::client::{decode_response, ClientEncoder, Request, Response};
use crate::proto::frame::FrameDecoder;
use crate::proto::limits::CLIENT_FRAME_BYTES_MAX;

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("cannot reach {addr}: {error}")]
    Connect { addr: String, error: std::io::Error },
    #[error("io error talking to {addr}: {error}")]
    Io { addr: String, error: std::io::Error },
    #[error("{addr} closed the connection")]
    Closed { addr: String },
    #[error("bad answer from {addr}: {detail}")]
    Protocol { addr: String, detail: String },
}

pub struct Connection {
    addr: String,
    stream: TcpStream,
    encoder: ClientEncoder,
    decoder: FrameDecoder,
}

impl Connection {
    pub fn connect(addr: &str, timeout: Duration) -> Result<Connection, ConnectionError> {
        let socket_addrs: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(addr)
            .map_err(|error| ConnectionError::Connect {
                addr: addr.to_string(),
                error,
            })?
            .collect();
        let mut last_error = None;
        for socket_addr in socket_addrs {
            match TcpStream::connect_timeout(&socket_addr, timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let _ = stream.set_read_timeout(Some(timeout));
                    let _ = stream.set_write_timeout(Some(timeout));
                    return Ok(Connection {
                        addr: addr.to_string(),
                        stream,
                        encoder: ClientEncoder::new(),
                        decoder: FrameDecoder::new(CLIENT_FRAME_BYTES_MAX),
                    });
                }
                Err(error) => last_error = Some(error),
            }
        }
        let error = last_error.unwrap_or_else(|| std::io::Error::other("no address"));
        Err(ConnectionError::Connect {
            addr: addr.to_string(),
            error,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request and waits for the answer with the same request id.
    pub fn call(&mut self, request: &Request) -> Result<Response, ConnectionError> {
        let addr = self.addr.clone();
        let frame =
            self.encoder
                .encode_request(request)
                .map_err(|e| ConnectionError::Protocol {
                    addr: addr.clone(),
                    detail: e.to_string(),
                })?;
        self.stream
            .write_all(frame)
            .map_err(|error| ConnectionError::Io {
                addr: addr.clone(),
                error,
            })?;
        loop {
            while let Some(frame) =
                self.decoder
                    .next_frame()
                    .map_err(|e| ConnectionError::Protocol {
                        addr: addr.clone(),
                        detail: e.to_string(),
                    })?
            {
                let response = decode_response(&frame).map_err(|e| ConnectionError::Protocol {
                    addr: addr.clone(),
                    detail: e.to_string(),
                })?;
                if response.request_id == request.request_id {
                    return Ok(response);
                }
            }
            let buffer = self.decoder.read_buffer(64 << 10);
            let read = self
                .stream
                .read(buffer)
                .map_err(|error| ConnectionError::Io {
                    addr: addr.clone(),
                    error,
                })?;
            self.decoder.filled(read);
            if read == 0 {
                return Err(ConnectionError::Closed { addr });
            }
        }
    }
}
