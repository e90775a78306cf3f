//! The VM's serial console as the node agent serves it.
//!
//! `keel`'s console socket serves one client at a time, so the agent is that client for the VM's
//! whole life: it keeps the last output (for `status.nodeReport.consoleTail` and for users who
//! attach late) and relays it to any number of attached users, with input from them to the
//! guest. The endpoint is a TCP listener (loopback by default): a client sends one line,
//! `<namespace>/<name>`, gets `OK` (or `ERR <why>`) and then the raw console both ways
//! (`keel-node-agent console NAMESPACE/NAME` is such a client).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{broadcast, mpsc};

/// Output bytes kept for late attachers and the status tail.
const KEEP_BYTES: usize = 16 << 10;

/// One VM's console relay.
#[derive(Clone, Debug)]
pub struct Console {
    kept: Arc<Mutex<VecDeque<u8>>>,
    output: broadcast::Sender<Vec<u8>>,
    input: mpsc::Sender<Vec<u8>>,
}

fn lock(kept: &Mutex<VecDeque<u8>>) -> MutexGuard<'_, VecDeque<u8>> {
    kept.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Console {
    /// Attaches to the console socket at `socket` (retrying until it exists) and relays it
    /// until the socket closes or the returned console and its clones are all dropped.
    pub fn attach(socket: PathBuf) -> Console {
        let (output, _) = broadcast::channel(256);
        let (input, mut input_rx) = mpsc::channel::<Vec<u8>>(64);
        let console = Console {
            kept: Arc::new(Mutex::new(VecDeque::with_capacity(KEEP_BYTES))),
            output,
            input,
        };
        let relay = console.clone();
        let kept = Arc::downgrade(&console.kept);
        tokio::spawn(async move {
            let mut stream = None;
            for _ in 0..500 {
                if kept.strong_count() <= 1 {
                    return;
                }
                match UnixStream::connect(&socket).await {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            let Some(stream) = stream else {
                log::warn!("console {} never appeared", socket.display());
                return;
            };
            let (mut read, mut write) = stream.into_split();
            let writer = tokio::spawn(async move {
                while let Some(bytes) = input_rx.recv().await {
                    if write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            });
            let mut buf = vec![0u8; 4096];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => relay.push(&buf[..n]),
                }
            }
            writer.abort();
        });
        console
    }

    fn push(&self, bytes: &[u8]) {
        {
            let mut kept = lock(&self.kept);
            kept.extend(bytes);
            let excess = kept.len().saturating_sub(KEEP_BYTES);
            kept.drain(..excess);
        }
        let _ = self.output.send(bytes.to_vec());
    }

    /// The output kept so far.
    pub fn kept(&self) -> Vec<u8> {
        lock(&self.kept).iter().copied().collect()
    }

    /// The last `n` lines of output (control characters dropped, each at most 200 characters).
    pub fn tail(&self, n: usize) -> Vec<String> {
        tail_lines(&self.kept(), n)
    }

    /// Sends input to the guest.
    pub async fn send(&self, bytes: Vec<u8>) {
        let _ = self.input.send(bytes).await;
    }
}

/// The last `n` non-empty lines of `bytes`.
pub fn tail_lines(bytes: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<String> = text
        .split('\n')
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .take(200)
                .collect::<String>()
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    let skip = lines.len().saturating_sub(n);
    lines.drain(..skip);
    lines
}

/// The consoles of the VMs on this node, by `namespace/name`.
pub type Registry = Arc<Mutex<HashMap<String, Console>>>;

/// Serves attach requests on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Registry) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            if let Err(err) = attach_client(stream, registry).await {
                log::debug!("console client: {err}");
            }
        });
    }
}

async fn attach_client(stream: TcpStream, registry: Registry) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut first = String::new();
    read.read_line(&mut first).await?;
    let key = first.trim().to_string();
    let console = registry
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
        .cloned();
    let Some(console) = console else {
        write
            .write_all(format!("ERR no running VM {key} on this node\n").as_bytes())
            .await?;
        return Ok(());
    };
    write.write_all(b"OK\n").await?;
    let mut output = console.output.subscribe();
    write.write_all(&console.kept()).await?;
    let forward_input = async {
        let mut buf = vec![0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => console.send(buf[..n].to_vec()).await,
            }
        }
    };
    let forward_output = async {
        loop {
            match output.recv().await {
                Ok(bytes) => {
                    if write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    };
    tokio::select! {
        _ = forward_input => {}
        _ = forward_output => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_last_non_empty_lines_without_control_characters() {
        let bytes = b"boot\r\nline 1\n\nline 2\x1b[0m\nline 3";
        assert_eq!(tail_lines(bytes, 2), ["line 2[0m", "line 3"]);
        assert_eq!(tail_lines(bytes, 10).len(), 4);
        assert!(tail_lines(b"", 3).is_empty());
    }
}
