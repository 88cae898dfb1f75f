//! A device's link to merpati over a WebSocket, as a phone holds it.

use serde_json::Value;

use super::{TestApp, PATIENCE};

/// A device link, as a phone would hold it.
pub struct Link {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

pub type Frame = tokio_tungstenite::tungstenite::Message;

impl Link {
    /// Opens a link and waits for its `ready` frame (the device is then recorded as up).
    pub async fn open(app: &TestApp, token: &str) -> Link {
        let mut link = Self::try_open(app, token).await.expect("link opens");
        let ready = link.next_json().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        link
    }

    /// The handshake, or its HTTP status when refused.
    pub async fn try_open(app: &TestApp, token: &str) -> Result<Link, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}/v1/device/link", app.url.replacen("http", "ws", 1));
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(Link { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("handshake failed: {e}"),
        }
    }

    pub async fn send(&mut self, frame: Frame) {
        use futures_util::SinkExt;
        self.ws.send(frame).await.expect("frame sent");
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send(Frame::Text(v.to_string().into())).await;
    }

    /// Sends a frame the server may stop reading part way: it refuses a frame by its
    /// header, closes the link and drops the rest, so the end of the frame can meet a reset
    /// (its close frame, sent before, is still there to read).
    pub async fn send_json_refused(&mut self, v: Value) {
        use futures_util::SinkExt;
        match self.ws.send(Frame::Text(v.to_string().into())).await {
            Ok(()) => {}
            Err(tokio_tungstenite::tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("frame not sent: {e}"),
        }
    }

    /// The next frame that is not a ping or pong.
    pub async fn next(&mut self) -> Option<Frame> {
        use futures_util::StreamExt;
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame in time")?;
            match frame {
                Ok(Frame::Ping(_) | Frame::Pong(_)) => continue,
                Ok(f) => return Some(f),
                Err(_) => return None,
            }
        }
    }

    pub async fn next_json(&mut self) -> Value {
        match self.next().await {
            Some(Frame::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// Waits for the server to close the link; returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next().await {
                Some(Frame::Close(Some(f))) => return (f.code.into(), f.reason.to_string()),
                Some(Frame::Close(None)) | None => return (0, String::new()),
                Some(_) => continue,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Wait for the server's answer, so the close has been seen.
        while self.next().await.is_some() {}
    }
}
