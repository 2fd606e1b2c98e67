//! A tiny HTTP/1.1 responder for `GET /metrics`, on its own OS thread so a slow scraper never
//! touches a reactor. One request per connection (`Connection: close`), one connection at a
//! time, bounded request size and read/write timeouts.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// Bytes of request head read at most.
const REQUEST_BYTES_MAX: usize = 8 << 10;
const SOCKET_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds `addr` and serves the metrics of cores `0..cores` from a new thread. Returns the
/// bound address (useful with port 0).
pub fn start(addr: &str, cores: usize) -> std::io::Result<std::net::SocketAddr> {
    for core in 0..cores {
        super::core(core);
    }
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("kahuna-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(error) = answer(stream) {
                            eprintln!("kahuna: metrics request failed: {error}");
                        }
                    }
                    Err(error) => {
                        eprintln!("kahuna: metrics accept failed: {error}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(local)
}

/// The request line's method and path, once the head is complete; `None` while incomplete.
pub fn request_target(head: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(head).ok()?;
    if !text.contains("\r\n\r\n") && !text.contains("\n\n") {
        return None;
    }
    let mut parts = text.lines().next()?.split_whitespace();
    Some((parts.next()?.to_string(), parts.next()?.to_string()))
}

fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    let target = loop {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..read]);
        if let Some(target) = request_target(&head) {
            break target;
        }
        if head.len() > REQUEST_BYTES_MAX {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
            );
        }
    };
    match (target.0.as_str(), target.1.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => {
            let body = super::exposition::render(super::cores());
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4",
                body.as_bytes(),
            )
        }
        ("GET", _) => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"try /metrics\n",
        ),
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", b""),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_lines_once_the_head_is_complete() {
        assert_eq!(
            request_target(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            None
        );
        assert_eq!(
            request_target(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET".into(), "/metrics".into()))
        );
        assert_eq!(request_target(b"\xff\xfe\r\n\r\n"), None);
    }

    #[test]
    fn serves_metrics_over_http() {
        let addr = start("127.0.0.1:0", 1).unwrap();
        super::super::core(0).storage_written(
            Duration::from_micros(200),
            Duration::from_micros(150),
            Duration::from_micros(30),
            Duration::from_micros(15),
        );
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("kahuna_storage_write_seconds_count{core=\"0\"}"));
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    }
}
