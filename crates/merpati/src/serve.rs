//! The HTTP listener: accepts connections up to `server.max_connections` (one past the cap
//! is closed at once), gives a client `server.header_timeout` to send a request's headers
//! (a slow-loris client is closed after it) and `server.body_timeout` to send its body (408),
//! tells each request the address it came from, and on shutdown stops accepting and waits
//! for every connection to finish its request (a task tracker owns each connection's task).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::api::extract::{BodyTimeout, ClientAddress};
use crate::config::ConnectionLimits;
use crate::tls::Tls;

/// What browsers are told on HTTPS: this host only over HTTPS, for a year.
const HSTS: &str = "max-age=31536000";

/// Serves `app` on `listener` until `stop`, then waits for the connections to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<Tls>>,
    stop: CancellationToken,
    metrics: Arc<merpati_runtime::metrics::Metrics>,
) -> std::io::Result<()> {
    let app = match tls {
        Some(_) => app.layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                response.headers_mut().insert(
                    axum::http::header::STRICT_TRANSPORT_SECURITY,
                    axum::http::HeaderValue::from_static(HSTS),
                );
                response
            },
        )),
        None => app,
    };
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let trusted: Arc<[ipnet::IpNet]> = limits.trusted_proxies.clone().into();
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, or a connection reset before it was taken:
                // the listener itself is fine.
                Err(e) => {
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics.connection_refused();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body_timeout = BodyTimeout(limits.body_timeout);
        let trusted = trusted.clone();
        let service =
            app.clone()
                .map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    let forwarded: Vec<&str> = request
                        .headers()
                        .get_all("x-forwarded-for")
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect();
                    let client = ClientAddress::of(peer.ip(), &forwarded, &trusted);
                    request.extensions_mut().insert(client);
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request.extensions_mut().insert(body_timeout);
                    request
                });
        metrics.connection_opened();
        let metrics = metrics.clone();
        let stop = stop.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let header_timeout = limits.header_timeout;
        connections.spawn(async move {
            match acceptor {
                None => serve_one(stream, service, header_timeout, &stop).await,
                Some(acceptor) => {
                    // The handshake, too, within the time a client has for its headers.
                    let handshake =
                        tokio::time::timeout(header_timeout, acceptor.accept(stream)).await;
                    if let Ok(Ok(stream)) = handshake {
                        serve_one(stream, service, header_timeout, &stop).await;
                    }
                }
            }
            metrics.connection_closed();
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// One connection, until it closes or the server stops (then after its request under way).
async fn serve_one<IO, S>(io: IO, service: S, header_timeout: Duration, stop: &CancellationToken)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = stop.cancelled() => {
            // Finishes the request under way, then closes.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
