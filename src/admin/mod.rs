//! The admin HTTP listener: `/metrics`, `/healthz` and `/readyz` for Prometheus and Kubernetes.
//!
//! It runs on the control thread ([`control`]), with its own single-threaded runtime, so a probe never
//! queues behind client work on the data path's workers: a saturated proxy still answers its kubelet.
//! Nor can idle or slow connections crowd a probe out: a connection must send its request within
//! [`HEAD_TIMEOUT`], and when [`MAX_CONNECTIONS`] are open the oldest one still waiting for its
//! request is closed to make room.

mod http;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use http::{BadRequest, Response};

/// Connections open at once; past it the oldest that has not sent its request is closed.
const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send its request head: probes send theirs at once.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// How long writing the answer may take (a scrape of /metrics by a slow reader).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoints report.
pub trait Endpoints: Send + Sync + 'static {
    /// The Prometheus text exposition.
    fn metrics(&self) -> String;
    /// `Ok` when the proxy should get traffic; otherwise a short reason.
    fn readiness(&self) -> Result<(), String>;
    /// The migrating pools' progress (INFO migration's text), after `action` (`pause`, `resume`)
    /// when one is given; Err when there is no migrating pool.
    fn migration(&self, _action: Option<&str>) -> Result<String, String> {
        Err("no pool migrates".into())
    }
}

/// The control thread's runtime: the admin and stats listeners run there, apart from the data path,
/// started on first use and running until the process exits.
pub fn control() -> std::io::Result<tokio::runtime::Handle> {
    static CONTROL: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    if let Some(handle) = CONTROL.get() {
        return Ok(handle.clone());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("slotline-control".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(CONTROL.get_or_init(|| handle).clone())
}

/// Runs `serve` for `listener` on the control thread.
pub fn spawn_on_control<F, Fut>(
    listener: std::net::TcpListener,
    serve: F,
) -> std::io::Result<tokio::task::JoinHandle<()>>
where
    F: FnOnce(TcpListener) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    listener.set_nonblocking(true)?;
    Ok(control()?.spawn(async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => serve(listener).await,
            Err(e) => tracing::error!(error = %e, "control listener unusable"),
        }
    }))
}

/// Serves the admin endpoints on `listener`, on the control thread, until the process exits.
pub fn spawn(
    listener: std::net::TcpListener,
    endpoints: Arc<dyn Endpoints>,
) -> std::io::Result<()> {
    spawn_on_control(listener, move |listener| serve(listener, endpoints)).map(drop)
}

async fn serve(listener: TcpListener, endpoints: Arc<dyn Endpoints>) {
    let waiting = Arc::new(Waiting::default());
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id += 1;
        let (id, evicted) = (next_id, waiting.enter(next_id));
        let endpoints = endpoints.clone();
        let waiting = waiting.clone();
        tokio::spawn(async move {
            let head = tokio::select! {
                head = tokio::time::timeout(HEAD_TIMEOUT, read(stream)) => head.ok(),
                _ = evicted.notified() => None,
            };
            waiting.leave(id);
            if let Some((mut stream, head)) = head {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, answer(&mut stream, head, &*endpoints))
                    .await;
            }
        });
    }
}

/// Connections that have not sent their request yet, oldest first.
#[derive(Default)]
struct Waiting(Mutex<VecDeque<(u64, Arc<Notify>)>>);

impl Waiting {
    /// Adds connection `id`; past [`MAX_CONNECTIONS`] the oldest waiting one is told to close.
    fn enter(&self, id: u64) -> Arc<Notify> {
        let evict = Arc::new(Notify::new());
        let mut waiting = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.push_back((id, evict.clone()));
        if waiting.len() > MAX_CONNECTIONS {
            if let Some((_, oldest)) = waiting.pop_front() {
                oldest.notify_one();
            }
        }
        evict
    }

    fn leave(&self, id: u64) {
        let mut waiting = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = waiting.iter().position(|(i, _)| *i == id) {
            waiting.remove(at);
        }
    }
}

/// Reads the request head; the stream and what it asked for, or why it could not be read.
async fn read(mut stream: TcpStream) -> (TcpStream, Result<http::Head, BadRequest>) {
    let head = http::read_head(&mut stream).await;
    (stream, head)
}

async fn answer(
    stream: &mut TcpStream,
    head: Result<http::Head, BadRequest>,
    endpoints: &dyn Endpoints,
) {
    let head = match head {
        Ok(head) => head,
        Err(BadRequest::Closed) => return,
        Err(BadRequest::TooLarge) => {
            return Response::text(431, "request head too large")
                .write(stream, true)
                .await
        }
        Err(BadRequest::Malformed) => {
            return Response::text(400, "malformed request")
                .write(stream, true)
                .await
        }
    };
    let response = route(&head.method, &head.path, endpoints);
    response.write(stream, true).await;
}

fn route(method: &str, path: &str, endpoints: &dyn Endpoints) -> Response {
    if let Some(action) = path.strip_prefix("/migration") {
        return migration(method, action, endpoints);
    }
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return Response::text(
            404,
            "not found: try /metrics, /healthz, /readyz or /migration",
        );
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

/// `GET /migration` (progress), `POST /migration/start` (a verifying pool starts moving, in every
/// slotline serving it), `POST /migration/pause` and `POST /migration/resume` (this process's
/// background mover; each slotline replica has its own).
fn migration(method: &str, action: &str, endpoints: &dyn Endpoints) -> Response {
    let (allowed, action) = match action {
        "" => ("GET", None),
        "/start" => ("POST", Some("start")),
        "/pause" => ("POST", Some("pause")),
        "/resume" => ("POST", Some("resume")),
        _ => {
            return Response::text(
                404,
                "not found: try GET /migration, POST /migration/start, /migration/pause or /migration/resume",
            )
        }
    };
    if method != allowed {
        let mut response = Response::text(405, format!("only {allowed} is served here"));
        response.allow = Some(allowed);
        return response;
    }
    match endpoints.migration(action) {
        Ok(text) => Response::text(200, text),
        Err(e) => Response::text(404, e),
    }
}
