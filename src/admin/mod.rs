//! The admin HTTP listener: `/metrics`, `/healthz` and `/readyz` for Prometheus and Kubernetes.
//!
//! It runs on its own thread with its own single-threaded runtime, so a probe never queues behind
//! client work on the data path's workers: a saturated proxy still answers its kubelet.

mod http;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use http::{BadRequest, Response};

/// Connections served at once; more are closed at accept, so a flood cannot exhaust file descriptors.
const MAX_CONNECTIONS: usize = 64;
/// How long one connection may take to send its request and read the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoints report.
pub trait Endpoints: Send + Sync + 'static {
    /// The Prometheus text exposition.
    fn metrics(&self) -> String;
    /// `Ok` when the proxy should get traffic; otherwise a short reason.
    fn readiness(&self) -> Result<(), String>;
}

/// Serves the admin endpoints on `listener` from a new thread, until the process exits.
pub fn spawn(
    listener: std::net::TcpListener,
    endpoints: Arc<dyn Endpoints>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("slotline-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, endpoints).await,
                    Err(e) => tracing::error!(error = %e, "admin listener unusable"),
                }
            })
        })?;
    Ok(())
}

async fn serve(listener: TcpListener, endpoints: Arc<dyn Endpoints>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, handle(stream, &*endpoints)).await;
            drop(slot);
        });
    }
}

async fn handle(mut stream: TcpStream, endpoints: &dyn Endpoints) {
    let head = match http::read_head(&mut stream).await {
        Ok(head) => head,
        Err(BadRequest::Closed) => return,
        Err(BadRequest::TooLarge) => {
            return Response::text(431, "request head too large")
                .write(&mut stream, true)
                .await
        }
        Err(BadRequest::Malformed) => {
            return Response::text(400, "malformed request")
                .write(&mut stream, true)
                .await
        }
    };
    let response = route(&head.method, &head.path, endpoints);
    response.write(&mut stream, true).await;
}

fn route(method: &str, path: &str, endpoints: &dyn Endpoints) -> Response {
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return Response::text(404, "not found: try /metrics, /healthz or /readyz");
    }
    if method != "GET" {
        let mut response = Response::text(405, "only GET is served");
        response.allow = Some("GET");
        return response;
    }
    match path {
        "/metrics" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: endpoints.metrics().into_bytes(),
            allow: None,
        },
        "/healthz" => Response::text(200, "ok"),
        _ => match endpoints.readiness() {
            Ok(()) => Response::text(200, "ready"),
            Err(reason) => Response::text(503, reason),
        },
    }
}
