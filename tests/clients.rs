//! Real client libraries against slotline: an application moved behind slotline keeps working.
//! redis-py (`pip install redis`, done by .ci/run) runs tests/clients/redis_py.py against a cluster
//! pool and a ketama pool, over RESP2 and RESP3; redis-cli -3 checks RESP3 types.

mod support;

use std::process::Command;

use support::{free_port, run_python_client, RedisCluster, RedisServers, Slotline};

/// Runs the redis-py script with RESP2 and with RESP3 (redis-py 8's default).
fn run_redis_py(port: u16) {
    for protocol in ["2", "3"] {
        run_python_client("redis_py.py", port, protocol);
    }
}

/// redis-cli in RESP3 mode sees RESP3 types (a map for HGETALL) through slotline.
fn redis_cli_resp3(port: u16) {
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-3", "--no-raw", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(cli(&["HSET", "cli:h", "f", "v"]).trim(), "(integer) 1");
    assert_eq!(cli(&["HGETALL", "cli:h"]).trim(), "1# \"f\" => \"v\"");
    assert_eq!(cli(&["DEL", "cli:h"]).trim(), "(integer) 1");
}

#[test]
fn redis_py_against_a_cluster_pool() {
    let cluster = RedisCluster::start(Default::default());
    let (_proxy, port) = Slotline::cluster(&cluster);
    run_redis_py(port);
    redis_cli_resp3(port);
}

#[test]
fn redis_py_against_a_ketama_pool() {
    let servers = RedisServers::start(3);
    let port = free_port();
    let yaml = servers.ketama_yaml(port, "");
    let _proxy = Slotline::start(&yaml);
    run_redis_py(port);
    redis_cli_resp3(port);
}
