//! The container image as a user gets it: deploy/image.sh builds the OCI archive (release binary,
//! buildah, no Docker engine, no registry), umoci unpacks it, and the unpacked root filesystem's
//! binary runs under `chroot --userspec=65532:65532` in front of a real Redis Cluster.
//!
//! Skipped, saying why, where buildah or umoci is missing or the test is not root (buildah's storage
//! and chroot need it); `.ci/run` installs both and runs as root.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{free_port, http_get, wait_for, ClusterOpts, RedisCluster, Reply, TempDir};

fn missing_tools() -> Option<String> {
    for tool in ["buildah", "umoci", "chroot", "strip"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "{tool} is not installed (apt-get install buildah umoci)"
            ));
        }
    }
    let uid = Command::new("id").arg("-u").output().ok()?;
    (String::from_utf8_lossy(&uid.stdout).trim() != "0")
        .then(|| "not root: buildah's storage and chroot need it".to_string())
}

/// Every path under `dir`, relative, directories included.
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(dir)
                .expect("under the root")
                .display()
                .to_string();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
            out.insert(rel);
        }
    }
    out
}

#[test]
fn the_image_builds_here_and_its_binary_serves_as_user_65532() {
    if let Some(why) = missing_tools() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = Command::new(repo.join("deploy/image.sh"))
        .current_dir(repo)
        .output()
        .expect("run deploy/image.sh");
    assert!(
        built.status.success(),
        "deploy/image.sh failed:\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let version = env!("CARGO_PKG_VERSION");
    let archive = repo.join(format!("target/slotline-{version}.oci.tar"));
    assert!(archive.exists(), "no {}", archive.display());

    // The archive as a registry would take it, unpacked as a runtime would.
    let dir = TempDir::new("image");
    let layout = dir.path().join("oci");
    std::fs::create_dir(&layout).expect("mkdir");
    let untar = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .status()
        .expect("tar");
    assert!(untar.success());
    let bundle = dir.path().join("bundle");
    let unpack = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:slotline:{version}", layout.display()))
        .arg(&bundle)
        .output()
        .expect("umoci");
    assert!(
        unpack.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&unpack.stderr)
    );
    let rootfs = bundle.join("rootfs");

    // Nothing but the binary, the libraries it links, CA certificates and the user's entries.
    let found = tree(&rootfs);
    let expected: BTreeSet<String> = [
        "etc",
        "etc/group",
        "etc/passwd",
        "etc/ssl",
        "etc/ssl/certs",
        "etc/ssl/certs/ca-certificates.crt",
        "usr",
        "usr/local",
        "usr/local/bin",
        "usr/local/bin/slotline",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let unexpected: Vec<&String> = found
        .difference(&expected)
        .filter(|p| !(p.starts_with("lib") && (p.contains(".so") || !p.contains('.'))))
        .collect();
    assert!(unexpected.is_empty(), "unexpected files: {unexpected:?}");
    assert!(
        expected.is_subset(&found),
        "missing: {:?}",
        expected.difference(&found)
    );
    assert!(
        !found.iter().any(|p| p.ends_with("sh")),
        "a shell in the image: {found:?}"
    );
    let size: u64 = found
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(rootfs.join(p)).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    eprintln!("image: {} KiB unpacked", size / 1024);
    assert!(size <= 20 << 20, "the image is {size} bytes unpacked");
    let config = std::fs::read_to_string(bundle.join("config.json")).expect("config.json");
    let config: serde_json::Value = serde_json::from_str(&config).expect("JSON");
    assert_eq!(config["process"]["user"]["uid"], 65532);
    assert_eq!(config["process"]["user"]["gid"], 65532);
    assert_eq!(config["process"]["args"][0], "/usr/local/bin/slotline");

    // Run it as the image runs: its own root, user 65532, a config mounted where CMD says.
    let cluster = RedisCluster::start(ClusterOpts {
        replicas_per_master: 0,
        ..ClusterOpts::default()
    });
    let (port, admin) = (free_port(), free_port());
    let seed = cluster.masters()[0].port;
    std::fs::create_dir_all(rootfs.join("etc/slotline")).expect("mkdir");
    std::fs::write(
        rootfs.join("etc/slotline/slotline.yml"),
        format!(
            "pools:\n  main:\n    listen: 127.0.0.1:{port}\n    mode: cluster\n    servers: [127.0.0.1:{seed}]\nadmin:\n  listen: 127.0.0.1:{admin}\nshutdown_grace: 3000\n"
        ),
    )
    .expect("write the config");
    let args: Vec<String> = config["process"]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("an arg").to_string())
        .collect();
    let mut child = Command::new("chroot")
        .arg("--userspec=65532:65532")
        .arg(&rootfs)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chroot");
    wait_for(
        Duration::from_secs(20),
        "the image's slotline to be ready",
        || {
            std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok()
                && http_get(admin, "/readyz").status == 200
        },
    );
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["SET", "image:k", "from the image"]), "OK");
    assert_eq!(cli(&["GET", "image:k"]), "from the image");
    let mut client = support::Client::connect(port);
    assert_eq!(
        client.cmd(&["GET", "image:k"]),
        Reply::bulk("from the image")
    );
    drop(client);
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let mut status = None;
    wait_for(
        Duration::from_secs(10),
        "the image's slotline to exit",
        || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        },
    );
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
}
