//! Starts the real `ridehail` binary on port 0 with its own data directory, and talks to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    /// Starts `ridehail dev` on 127.0.0.1:0 and waits for its "listening on" line.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Self::start_service(data_dir, "dev", env)
    }

    /// Starts `ridehail <service>` (`dev` or `edge`) on 127.0.0.1:0 and waits for its URL.
    pub fn start_service(data_dir: &Path, service: &str, env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ridehail"));
        command
            .args(["--data-dir", data_dir.to_str().unwrap(), service, "--bind", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("ridehail starts");
        let stdout = child.stdout.take().unwrap();
        // Killed on drop even if the URL never comes.
        let child = Worker(Some(child));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("ridehail listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(30)).expect("ridehail printed its URL");
        Server { child: child.into_inner(), url }
    }

    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }
}

/// A child process, killed when dropped (also when a test fails).
pub struct Worker(Option<Child>);

impl Worker {
    /// Takes the child out; it is no longer killed on drop.
    fn into_inner(mut self) -> Child {
        self.0.take().expect("a worker holds its child until taken")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts a worker process (`ride-worker` or `user-worker`) on the data directory.
pub fn start_worker(data_dir: &Path, worker: &str) -> Worker {
    let child = Command::new(env!("CARGO_BIN_EXE_ridehail"))
        .args(["--data-dir", data_dir.to_str().unwrap(), worker])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("worker starts");
    Worker(Some(child))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny JSON client.
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn new(base: &str) -> Self {
        Self { client: reqwest::Client::new(), base: base.to_owned() }
    }

    pub async fn send(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base)).header("prefer", "wait=10");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn login(&self, email: &str, password: &str) -> (String, String) {
        let (status, body) =
            self.send("POST", "/v1/sessions", None, Some(json!({ "email": email, "password": password }))).await;
        assert_eq!(status, 200, "{body}");
        (body["user_id"].as_str().unwrap().to_owned(), body["access_token"].as_str().unwrap().to_owned())
    }
}
