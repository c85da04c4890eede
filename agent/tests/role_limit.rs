//! The agent refuses role documents over `MAX_ROLE_BYTES` (issue 13), whether the server declares the size or
//! streams it, against a raw HTTP responder on loopback.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lbfleet_agent::client::{ClientError, ServerClient, MAX_ROLE_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers one request with `head` and then `body_chunks` chunks of 1 MiB (chunked encoding).
async fn responder(chunked_mib: usize, declared: Option<u64>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        if let Some(n) = declared {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {n}\r\n\r\n"
            );
            let _ = s.write_all(head.as_bytes()).await;
            return;
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b' '; 1024 * 1024];
        for _ in 0..chunked_mib {
            let frame = format!("{:x}\r\n", chunk.len());
            if s.write_all(frame.as_bytes()).await.is_err()
                || s.write_all(&chunk).await.is_err()
                || s.write_all(b"\r\n").await.is_err()
            {
                return;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn oversized_role_documents_are_refused() {
    let over = MAX_ROLE_BYTES / (1024 * 1024) + 1;
    for (name, url) in [
        ("streamed", responder(over, None).await),
        (
            "declared",
            responder(0, Some(MAX_ROLE_BYTES as u64 + 1)).await,
        ),
    ] {
        let client = ServerClient::new(&url, Some("lbf_node_x".into())).unwrap();
        let err = client
            .poll_role(0, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::RoleTooLarge { .. }),
            "{name}: {err:?}"
        );
    }
}
