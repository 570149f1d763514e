//! slotline: a Redis proxy for Kubernetes. Clients speak plain RESP to one address; slotline routes each
//! command to the Redis Cluster node that owns its key (following MOVED and ASK and refreshing the
//! topology itself), to the shard twemproxy would pick for it, or to the current master (or a replica)
//! of a primary/replica group.
//!
//! # Layout
//!
//! - [`config`]: the YAML configuration, its defaults and validation.
//! - [`protocol`]: RESP on the wire: cutting requests and replies out of byte streams without copying,
//!   and the replies slotline writes itself.
//! - [`command`]: Redis's command table (arity, flags, key specs, generated from its `COMMAND`), the
//!   one policy that decides how slotline handles each command (`command::policy`), key extraction,
//!   and where a blocking command keeps its timeout (`command::blocking`).
//! - [`route`]: where a key goes: cluster hash slots, and twemproxy's hashes and distributions (ketama,
//!   modula, random) for sharded pools.
//! - [`backend`]: multiplexed, pipelined connections to backend nodes (TCP or unix socket),
//!   reconnecting with backoff, taking requests alone or in batches (a split request's parts for one
//!   node) from the queue in front of each, the per-session inbox their replies are delivered to
//!   (which wakes a session only for the replies it can act on), and the
//!   address -> node map pools keep; a client's own subscriber connections, which hand every frame to
//!   the session and count what a slow subscriber has not taken; feeds that follow every master of
//!   a pool (tracking, MONITOR's relay) and the gate clients wait at until they do; the other
//!   logins a client's requests may run as (`backend_users`, `node_logins`).
//! - [`cluster`]: the slot map of a Redis Cluster pool, its refresher, and MOVED/ASK classification;
//!   seeds from discovery.
//! - [`shards`]: sharded pools (ketama, modula, random): their servers (replaced whole as discovery
//!   follows them, keyed by stable name), twemproxy's placement behind an ArcSwap, and auto-ejection.
//! - [`primary`]: primary pools (a master with replicas): who is master, decided by Sentinel (a
//!   majority, and `+switch-master` announcements) or by `ROLE` probes, as a snapshot behind an
//!   ArcSwap; healthy replicas for reads; READONLY retries after a switch; writes held through a
//!   Sentinel promotion so none the old master acknowledged is lost (`handover`).
//! - [`read`]: read policies (which of a master and its replicas serves a read, for cluster and
//!   primary pools alike), a client's read-your-writes state, and how far each replica lags,
//!   measured from replication offsets.
//! - [`discovery`]: where a pool's backends are: the `servers:` list with host names re-resolved, or a
//!   Kubernetes Service's EndpointSlices (Endpoints as a fallback) followed with kube-rs; complete
//!   endpoint sets handed to the pool, and the source's state for readiness and metrics.
//! - [`stats`]: the counters the data path keeps (twemproxy's fields, as relaxed atomics) and their
//!   twemproxy-compatible JSON rendering.
//! - [`server`]: listeners and client sessions (the one place that glues the others together): the
//!   session loop and its parts (a request's dispatch, replies placed in request order, the output
//!   and its bounds), its buffers (the worker's read arena and scratch output; a client keeps bytes
//!   only for a partial request or unwritten replies, all bounded), its routing view, split and
//!   fan-out requests and their merges, redirects (only to nodes the topology lists; never a
//!   script's) and a demoted master's READONLY, transactions, blocking commands and WAIT on
//!   connections of the client's own (a blocking command a demoted master gave up goes again to the
//!   new one: `demoted`), a login a node checks (`node_logins`), pub/sub
//!   (subscriptions on subscriber connections of the
//!   client's own, confirmations with the client's counts, subscriber mode), locally answered
//!   commands, INFO, and the twemproxy stats port; the running pools (a primary pool's replica
//!   listener too) and config reload (SIGHUP, file change); the lifecycle: a client's seat, readiness
//!   and the SIGTERM drain.
//! - [`migrate`]: a migrating pool's old placement, its phase (verifying, then moving for every
//!   slotline at once), shadow reads, the MIGRATEs that move a request's keys before it runs, and
//!   the background mover that empties the old servers (docs/migration.md).
//! - [`metrics`]: the Prometheus registry, per-pool metric handles, the latency histograms (rows of
//!   atomics, made cumulative when scraped), the worker's tallies (lent to a session for one step),
//!   and the collector that reads the data path's atomics at scrape time.
//! - [`admin`]: the control thread, and the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`)
//!   on it, safe from idle and slow connections.
//! - [`clients`]: the clients connected through slotline, as CLIENT LIST, CLIENT INFO and CLIENT KILL
//!   see them (each session keeps its record current).
//! - [`monitor`]: MONITOR's stream of every command, to any number of monitors, bounded per monitor,
//!   with the masters' script commands relayed while anyone monitors.
//! - [`pause`]: CLIENT PAUSE: which commands a pause holds, and until when.
//! - [`cmdstats`]: INFO commandstats and errorstats: calls, time, refusals and errors per command,
//!   and error replies per error code, as clients saw them.
//! - [`scripts`]: the scripts EVAL ran, loaded on every master so EVALSHA and SCRIPT EXISTS find
//!   them wherever they ask.
//! - [`slowlog`]: SLOWLOG's entries: requests slower than `slowlog_log_slower_than`, end to end.
//! - [`throttle`]: at most one log line per period for events a client can provoke at will.
//! - [`tls`]: TLS with rustls for a pool's clients and backends, its certificate files followed as
//!   they rotate.
//! - [`acl`]: a pool's users in Redis's ACL language (rules parser, the user set swapped whole as the
//!   ACL file changes, the check of one request against one user, ACL LOG, failed-login delays) and
//!   the ACL command answered from them; the session asks it one question per command.
//! - [`follow`]: following files settings are read from (certificates, the ACL file) as they change.
//! - [`tracking`]: CLIENT TRACKING through slotline: which clients read which keys (or watch which
//!   prefixes), the feeds that follow every master's changes, and the invalidations sent to them.
//!
//! A request travels: session reads and cuts a frame -> command lookup and key slot -> topology snapshot
//! names the node -> the node's connection writes it with other clients' requests -> the reply bytes come
//! back into the session's inbox, numbered, and are written to the client in request order.

#![forbid(unsafe_code)]

pub mod acl;
pub mod admin;
pub mod backend;
pub mod clients;
pub mod cluster;
pub mod cmdstats;
pub mod command;
pub mod config;
pub mod discovery;
pub mod follow;
pub mod metrics;
pub mod migrate;
pub mod monitor;
pub mod pause;
pub mod primary;
pub mod protocol;
pub mod read;
pub mod route;
pub mod scripts;
pub mod server;
pub mod shards;
pub mod slowlog;
pub mod stats;
pub mod throttle;
pub mod tls;
pub mod tracking;
