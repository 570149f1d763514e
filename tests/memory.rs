//! What a connection costs and what a client can make slotline hold, read from slotline's own
//! memory (its anonymous RSS in `/proc/PID/status`): an idle client keeps no buffer, memory goes
//! back when clients leave, and every byte bound holds (requests, replies, clients that have not
//! authenticated).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use support::{
    free_port, proc_status_kib, wait_for, wait_until, Client, RedisServers, Reply, Slotline,
};

/// slotline's own resident memory, in KiB: its heap, stacks and buffers (RssAnon). The pages of its
/// code are left out: slotline unmaps its start-up code once it listens, and the kernel maps code
/// back in as it runs, so the first 2,000 clients would bring in code pages that no later client
/// costs.
fn rss_kib(proxy: &Slotline) -> u64 {
    proc_status_kib(proxy.pid(), "RssAnon").expect("RssAnon of slotline")
}

/// Waits up to `deadline` for slotline's own RSS to fall within `within_kib` of `before`; panics
/// with what is still held, naming `what`.
fn wait_back(proxy: &Slotline, before: u64, within_kib: u64, deadline: Duration, what: &str) {
    let mut held = 0;
    let back = wait_until(deadline, || {
        held = rss_kib(proxy).saturating_sub(before);
        held <= within_kib
    });
    assert!(back, "{held} KiB of {what} still held after {deadline:?}");
}

fn start(servers: &RedisServers, extra: &str) -> Slotline {
    let proxy = Slotline::start(&servers.ketama_yaml(free_port(), extra));
    // The first client warms what every later one shares (the worker's buffers, the backend
    // connection).
    let mut warm = proxy.client();
    if extra.contains("redis_auth") {
        assert!(warm.cmd(&["AUTH", "secret"]).is_ok());
    }
    assert_eq!(warm.cmd(&["PING"]), Reply::Status("PONG".into()));
    assert_eq!(warm.cmd(&["SET", "warm", "1"]), Reply::ok());
    proxy
}

/// 2,000 clients that each said PING once and wait: README's budget is 3 KiB each (read buffers
/// used to cost 32 KiB). When they leave, the memory goes back to the system.
#[test]
fn an_idle_client_keeps_no_buffer_and_the_memory_goes_back_when_clients_leave() {
    const CLIENTS: usize = 2000;
    let servers = RedisServers::start(1);
    let proxy = start(&servers, "");
    let before = rss_kib(&proxy);
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect"))
        .collect();
    for c in &mut clients {
        c.write_all(b"*1\r\n$4\r\nPING\r\n").expect("PING");
    }
    for c in &mut clients {
        let mut pong = [0u8; 7];
        c.read_exact(&mut pong).expect("PONG");
        assert_eq!(&pong, b"+PONG\r\n");
    }
    let idle = rss_kib(&proxy);
    let per_client = (idle.saturating_sub(before)) * 1024 / CLIENTS as u64;
    eprintln!(
        "own RSS {before} KiB, with {CLIENTS} idle clients {idle} KiB: {per_client} bytes each"
    );
    assert!(
        per_client <= 3 * 1024,
        "an idle client costs {per_client} bytes of RSS"
    );
    drop(clients);
    let what = "the memory of the clients that left";
    wait_back(&proxy, before, 2048, Duration::from_secs(20), what);
}

/// A client that asks for replies and does not read them is disconnected at
/// `max_client_reply_bytes`, not buffered without end; others are served, and the memory goes back.
#[test]
fn a_client_that_does_not_read_its_replies_is_cut_off_at_the_bound() {
    let servers = RedisServers::start(1);
    let proxy = start(
        &servers,
        "    max_reply_bytes: 1048576\n    max_client_reply_bytes: 4194304\n",
    );
    let value = "v".repeat(512 * 1024);
    let mut other = proxy.client();
    assert_eq!(other.cmd(&["SET", "big", &value]), Reply::ok());
    let before = rss_kib(&proxy);
    // 128 replies of 512 KiB: 64 MiB, far past the 4 MiB bound and what socket buffers hold.
    let mut slow = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
    let get = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(128);
    slow.write_all(&get).expect("send the GETs");
    wait_for(
        Duration::from_secs(10),
        "slotline to drop the slow reader",
        || proxy.log().contains("does not read its replies"),
    );
    assert_eq!(other.cmd(&["GET", "warm"]), Reply::bulk("1"));
    // What it had queued is gone once the socket is drained: read until the close.
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut sink = Vec::new();
    let got = slow.read_to_end(&mut sink).map(|_| sink.len()).unwrap_or(0);
    assert!(
        got < 128 * 512 * 1024,
        "the slow reader got every reply ({got} bytes)"
    );
    let what = "the slow reader's replies";
    wait_back(&proxy, before, 8192, Duration::from_secs(30), what);
}

/// With the backend holding writes, a client that keeps sending is read only up to
/// `max_client_request_bytes`: the rest waits in the kernel, not in slotline. Every request is answered
/// once the backend moves again.
#[test]
fn requests_past_the_byte_bound_wait_outside_slotline() {
    let servers = RedisServers::start(1);
    let proxy = start(
        &servers,
        "    max_client_request_bytes: 1048576\n    timeout: 10000\n",
    );
    let before = rss_kib(&proxy);
    let paused = servers.client(0).cmd(&["CLIENT", "PAUSE", "3000", "WRITE"]);
    assert_eq!(paused, Reply::ok());
    // 256 SETs of 128 KiB: 32 MiB on their way.
    let value = "x".repeat(128 * 1024);
    let mut client = proxy.client();
    let cmds: Vec<Vec<String>> = (0..256)
        .map(|i| vec!["SET".into(), format!("k{i}"), value.clone()])
        .collect();
    let port = proxy.port();
    let writer = thread::spawn(move || {
        let mut c = Client::connect(port);
        c.pipeline(&cmds)
    });
    thread::sleep(Duration::from_millis(1500));
    let held = rss_kib(&proxy).saturating_sub(before);
    assert!(
        held < 12 * 1024,
        "slotline holds {held} KiB of a 32 MiB pipeline against a 1 MiB bound"
    );
    let replies = writer.join().expect("writer");
    assert!(
        replies.iter().all(|r| *r == Reply::ok()),
        "{:?}",
        &replies[..3]
    );
    assert_eq!(client.cmd(&["EXISTS", "k255"]), Reply::Int(1));
}

/// Before AUTH, Redis's own limits: 10 arguments of 16 KiB at most, refused at the header, so eight
/// clients declaring 64 MiB each make slotline hold nothing; and hundreds of clients each holding a
/// partial request within those limits cannot together pass the process-wide bound for
/// unauthenticated bytes. The client with the password is served throughout.
#[test]
fn clients_that_have_not_authenticated_cannot_make_slotline_hold_memory() {
    // The shards ask for the password too; the harness's readiness PING is answered NOAUTH.
    let servers = RedisServers::start(1);
    servers
        .client(0)
        .cmd(&["CONFIG", "SET", "requirepass", "secret"]);
    let proxy = start(&servers, "    redis_auth: secret\n");
    let mut user = proxy.client();
    assert!(user.cmd(&["AUTH", "secret"]).is_ok());
    let before = rss_kib(&proxy);

    let mut declared: Vec<Client> = (0..8).map(|_| proxy.client()).collect();
    for c in &mut declared {
        c.send_raw(b"*1\r\n$67108864\r\n");
        c.send_raw(&[b'x'; 4096]);
    }
    for c in &mut declared {
        assert_eq!(
            c.read_reply(),
            Reply::Error("ERR Protocol error: unauthenticated bulk length".into())
        );
        assert!(c.is_closed());
    }
    let mut many: Vec<Client> = (0..400).map(|_| proxy.client()).collect();
    // Nine of the ten arguments, 16 KiB each: 144 KiB held per client, 56 MiB if all were taken.
    let partial = {
        let mut p = b"*10\r\n".to_vec();
        for _ in 0..9 {
            p.extend_from_slice(b"$16384\r\n");
            p.extend_from_slice(&[b'y'; 16384]);
            p.extend_from_slice(b"\r\n");
        }
        p
    };
    let mut refused = 0;
    for c in &mut many {
        c.send_raw(&partial);
    }
    assert_eq!(user.cmd(&["GET", "warm"]), Reply::bulk("1"));
    for c in &mut many {
        c.set_read_timeout(Duration::from_millis(50));
        if let Ok(Reply::Error(e)) = c.try_read_reply() {
            assert!(e.contains("have not authenticated"), "{e}");
            refused += 1;
        }
    }
    let held = rss_kib(&proxy).saturating_sub(before);
    eprintln!("{refused} of 400 refused; slotline holds {held} KiB more");
    assert!(refused > 0, "the budget refused no one");
    assert!(held < 48 * 1024, "unauthenticated clients hold {held} KiB");
    assert_eq!(user.cmd(&["GET", "warm"]), Reply::bulk("1"));
}

/// A rolling restart of the applications: 10,000 clients connecting at once are all served, none
/// refused (no `client_connections` here), and the memory goes back once they leave.
#[test]
fn a_storm_of_ten_thousand_connections_is_served() {
    const CLIENTS: usize = 10_000;
    let servers = RedisServers::start(1);
    let proxy = start(&servers, "");
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let c = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect in the storm");
        clients.push(c);
    }
    for c in &mut clients {
        c.write_all(b"*1\r\n$4\r\nPING\r\n").expect("PING");
    }
    for c in &mut clients {
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut pong = [0u8; 7];
        c.read_exact(&mut pong).expect("PONG in the storm");
        assert_eq!(&pong, b"+PONG\r\n");
    }
    let info = proxy.client().cmd(&["INFO", "clients"]);
    let text = String::from_utf8_lossy(info.as_bytes().expect("INFO")).into_owned();
    // And the one asking.
    assert!(
        text.contains(&format!("connected_clients:{}", CLIENTS + 1)),
        "{text}"
    );
}

/// `ulimit -n` below what `client_connections` admits is said at start-up.
#[test]
fn a_file_limit_below_client_connections_is_reported_at_start() {
    let servers = RedisServers::start(1);
    let proxy =
        Slotline::start(&servers.ketama_yaml(free_port(), "    client_connections: 5000000\n"));
    wait_for(Duration::from_secs(5), "the start-up warning", || {
        proxy
            .log()
            .contains("more clients than the process may open files")
    });
}

/// A backend slower than its clients (here: stopped, so it reads nothing) makes them wait, not
/// slotline hold their requests: past `max_server_queue_bytes` waiting for it, sessions stop reading
/// until half has gone out. Eight clients with 8 MiB each on their way: slotline holds a few MiB,
/// every request is answered once the backend moves again, and the memory the queue held goes back.
#[test]
fn a_slow_backend_makes_clients_wait_rather_than_slotline_hold_their_requests() {
    let servers = RedisServers::start(1);
    let proxy = start(
        &servers,
        "    max_server_queue_bytes: 2097152\n    max_client_request_bytes: 16777216\n    timeout: 30000\n",
    );
    let before = rss_kib(&proxy);
    servers.signal(0, "STOP");
    let value = "z".repeat(64 * 1024);
    let port = proxy.port();
    let writers: Vec<_> = (0..8)
        .map(|c| {
            let value = value.clone();
            thread::spawn(move || {
                let cmds: Vec<Vec<String>> = (0..128)
                    .map(|i| vec!["SET".into(), format!("w{c}:{i}"), value.clone()])
                    .collect();
                Client::connect(port).pipeline(&cmds)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(2000));
    let held = rss_kib(&proxy).saturating_sub(before);
    servers.signal(0, "CONT");
    eprintln!("slotline holds {held} KiB more while the backend is stopped");
    assert!(
        held < 24 * 1024,
        "slotline holds {held} KiB of 64 MiB sent to a stopped backend, against a 2 MiB queue bound"
    );
    for writer in writers {
        let replies = writer.join().expect("writer");
        assert!(replies.iter().all(|r| *r == Reply::ok()));
    }
    let what = "the queue in front of the stopped backend";
    wait_back(&proxy, before, 8192, Duration::from_secs(30), what);
}

/// Sixteen clients on four workers each store and read back 4 MiB of 64 KiB values, then leave:
/// what they made slotline hold goes back. Two things kept it: a worker's scratch buffer, which
/// grew to hold a batch of replies and, once written out, read as small and was kept (4 MiB per
/// worker); and the workers' heaps, whose free top the allocator kept up to 4 MiB each. 9.8–18.9
/// MiB stayed resident for good; now 1.7–3.2.
#[test]
fn a_burst_of_large_replies_gives_its_memory_back() {
    let servers = RedisServers::start(3);
    let yaml = format!("workers: 4\n{}", servers.ketama_yaml(free_port(), ""));
    let proxy = Slotline::start(&yaml);
    let mut warm = proxy.client();
    assert_eq!(warm.cmd(&["SET", "warm", "1"]), Reply::ok());
    drop(warm);
    let before = rss_kib(&proxy);
    let value = "z".repeat(64 * 1024);
    let port = proxy.port();
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let value = value.clone();
            thread::spawn(move || {
                let mut cmds: Vec<Vec<String>> = (0..64)
                    .map(|i| vec!["SET".into(), format!("b{c}:{i}"), value.clone()])
                    .collect();
                cmds.extend((0..64).map(|i| vec!["GET".into(), format!("b{c}:{i}")]));
                Client::connect(port).pipeline(&cmds)
            })
        })
        .collect();
    for client in clients {
        let replies = client.join().expect("client");
        assert!(replies[..64].iter().all(|r| *r == Reply::ok()));
        assert!(replies[64..].iter().all(|r| *r == Reply::bulk(&value)));
    }
    let what = "what the clients that left made slotline hold";
    wait_back(&proxy, before, 6 * 1024, Duration::from_secs(30), what);
}
