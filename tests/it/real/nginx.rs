//! An L7 load balancer in front of the proxy's web port: nginx terminating TLS with its own
//! certificate and proxying HTTP/1.1 (WebSocket upgrades included) to the proxy over TLS.
//!
//! nginx speaks HTTP only, so a ClientHello offering a Teleport ALPN protocol never gets it:
//! that is what forces Teleport clients into the ALPN connection upgrade
//! (`/webapi/connectionupgrade`). HTTP/2 is not enabled, so nginx negotiates `http/1.1` or
//! nothing.

use std::fs;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::cluster::{RealCluster, free_port};
use super::probe::{self, Trust};
use super::supervisor::{Supervised, ensure_debian_package, tail};

/// A running nginx; dropping it stops nginx and deletes its directory.
pub struct L7Balancer {
    // Declared first so that it is dropped first.
    nginx: Supervised,
    addr: SocketAddr,
    ca_pem: String,
    dir: TempDir,
}

impl L7Balancer {
    /// Starts nginx on a free loopback port in front of `cluster`'s web port, installing the
    /// Debian package first if nginx is missing (and failing loudly if that is impossible).
    pub fn start(cluster: &RealCluster) -> Self {
        ensure_debian_package("nginx", "nginx");
        let dir = tempfile::Builder::new()
            .prefix("teleport-email-nginx-")
            .tempdir()
            .expect("temp dir");
        for sub in ["tmp", "logs"] {
            fs::create_dir_all(dir.path().join(sub)).expect("create dir");
        }
        let addr = free_port();
        let cert = cluster.web_pki().issue_loopback(dir.path(), "balancer");
        let conf = dir.path().join("nginx.conf");
        fs::write(
            &conf,
            nginx_conf(dir.path(), addr, cluster.web_addr(), &cert),
        )
        .expect("write nginx.conf");

        let nginx = Supervised::spawn(
            "nginx",
            std::path::Path::new("nginx"),
            &[
                "-p".to_owned(),
                dir.path().display().to_string(),
                "-c".to_owned(),
                conf.display().to_string(),
                "-e".to_owned(),
                dir.path().join("logs/error.log").display().to_string(),
            ],
            &[],
            &dir.path().join("nginx.out"),
            Some(dir.path()),
        );
        let balancer = L7Balancer {
            nginx,
            addr,
            ca_pem: cluster.web_ca_pem().to_owned(),
            dir,
        };
        balancer.wait_ready();
        balancer
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let err = match probe::handshake(
                self.addr,
                "localhost",
                &["http/1.1"],
                Trust::Ca(&self.ca_pem),
            ) {
                Ok(_) => return,
                Err(e) => e,
            };
            if !self.nginx.is_running() || Instant::now() > deadline {
                panic!(
                    "nginx did not come up on {} ({err})\n--- error.log\n{}\n--- output\n{}",
                    self.addr,
                    tail(&self.dir.path().join("logs/error.log"), 30),
                    self.nginx.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The balancer's address (TLS, certificate from the cluster's web PKI).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA (PEM) that signed the balancer's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

/// nginx's `user` directive: a master started as root would otherwise hand the workers to
/// `nobody`, who cannot read our temporary directory.
fn user_directive() -> String {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match uid.as_deref() {
        Ok("0") => "user root;".to_owned(),
        _ => String::new(),
    }
}

fn nginx_conf(
    dir: &std::path::Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    cert: &super::certs::CertFiles,
) -> String {
    let d = dir.display();
    format!(
        "\
# Written by the teleport-email real-cluster test harness.
{user}
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/logs/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    server {{
        listen {listen} ssl;
        ssl_certificate {crt};
        ssl_certificate_key {key};

        location / {{
            proxy_pass https://{upstream};
            proxy_ssl_verify off;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
",
        user = user_directive(),
        crt = cert.cert.display(),
        key = cert.key.display(),
    )
}
