//! Talks over a Keel vsock device, from either side, one line each way.
//!
//! Keel's virtio-vsock device has its host side on Unix sockets (as Firecracker's has): a host
//! process connects to the device's `uds_path` and writes `CONNECT <port>\n` to reach a guest
//! listener, and a guest connection to host port `P` arrives at a Unix listener on
//! `<uds_path>_P`. This program is both ends, so the two directions can be shown (and tested,
//! as the nested lane does with a stock Linux guest) without other tools:
//!
//! ```text
//! # in the guest                           # on the host
//! vsock listen 5001                         vsock host-connect /run/vm.vsock 5001 hello
//! vsock connect 2 5000 hello                vsock host-listen /run/vm.vsock_5000
//! ```
//!
//! A connecting side sends its message as one line and prints the reply line; a listening side
//! accepts one connection, reads one line, answers `echo <line>` and prints what it read. Built
//! statically (`--target x86_64-unknown-linux-musl`) it runs in any Linux guest.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(about = "Exchange one line over a Keel vsock device, from the guest or the host side")]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Keep retrying a refused connection for this many seconds (the peer may not listen yet).
    #[arg(long, global = true, default_value_t = 0)]
    retry_s: u64,
    /// Give up after this many seconds without a connection (listening) or a line.
    #[arg(long, global = true, default_value_t = 30)]
    timeout_s: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Guest side: connect to CID:PORT over AF_VSOCK (the host is CID 2), send MESSAGE.
    Connect {
        cid: u32,
        port: u32,
        message: String,
    },
    /// Guest side: accept one AF_VSOCK connection on PORT and echo one line.
    Listen { port: u32 },
    /// Host side: connect to the device's Unix socket, ask for guest PORT, send MESSAGE.
    HostConnect {
        uds_path: PathBuf,
        port: u32,
        message: String,
    },
    /// Host side: accept one guest connection on this Unix socket path (`<uds_path>_<port>`).
    HostListen { path: PathBuf },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let timeout = Duration::from_secs(args.timeout_s.max(1));
    let retry = Duration::from_secs(args.retry_s);
    let result = match &args.command {
        Command::Connect { cid, port, message } => with_retry(retry, || vsock_connect(*cid, *port))
            .and_then(|stream| {
                let stream = std::fs::File::from(stream);
                set_timeout(&stream, timeout)?;
                exchange(stream, message)
            }),
        Command::Listen { port } => vsock_listen(*port, timeout).and_then(|conn| {
            let conn = std::fs::File::from(conn);
            set_timeout(&conn, timeout)?;
            answer(conn)
        }),
        Command::HostConnect {
            uds_path,
            port,
            message,
        } => with_retry(retry, || host_connect(uds_path, *port, timeout))
            .and_then(|stream| exchange(stream, message)),
        Command::HostListen { path } => host_listen(path, timeout),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("vsock: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Calls `attempt` until it succeeds or `retry` has passed, half a second apart.
fn with_retry<T>(
    retry: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(err) if start.elapsed() >= retry => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Sends `message` as one line and returns the peer's reply line.
fn exchange<S: std::io::Read + Write>(mut stream: S, message: &str) -> Result<String, String> {
    writeln!(stream, "{message}").map_err(|err| format!("send: {err}"))?;
    read_line(&mut BufReader::new(stream))
}

/// Reads one line and answers `echo <line>`; returns the line read.
fn answer<S: std::io::Read + Write>(stream: S) -> Result<String, String> {
    let mut reader = BufReader::new(stream);
    let line = read_line(&mut reader)?;
    writeln!(reader.get_mut(), "echo {line}").map_err(|err| format!("reply: {err}"))?;
    Ok(line)
}

fn read_line<R: BufRead>(reader: &mut R) -> Result<String, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err("the peer closed the connection without a line".into()),
        Ok(_) => Ok(line.trim_end_matches(['\r', '\n']).to_string()),
        Err(err) => Err(format!("read: {err}")),
    }
}

/// Host side of a host-initiated connection: `CONNECT <port>` and Keel's `OK <port>` answer.
fn host_connect(uds_path: &PathBuf, port: u32, timeout: Duration) -> Result<UnixStream, String> {
    let mut stream = UnixStream::connect(uds_path)
        .map_err(|err| format!("connect to {}: {err}", uds_path.display()))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|err| format!("set timeout: {err}"))?;
    writeln!(stream, "CONNECT {port}").map_err(|err| format!("send CONNECT: {err}"))?;
    // Byte by byte, so no data after the OK line is consumed.
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while reply.last() != Some(&b'\n') && reply.len() < 64 {
        match std::io::Read::read(&mut stream, &mut byte) {
            Ok(0) => return Err(format!("guest port {port} refused the connection")),
            Ok(_) => reply.push(byte[0]),
            Err(err) => return Err(format!("read the CONNECT reply: {err}")),
        }
    }
    if !reply.starts_with(b"OK ") {
        return Err(format!(
            "unexpected CONNECT reply {:?}",
            String::from_utf8_lossy(&reply)
        ));
    }
    Ok(stream)
}

fn host_listen(path: &PathBuf, timeout: Duration) -> Result<String, String> {
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).map_err(|err| format!("listen on {}: {err}", path.display()))?;
    // SO_RCVTIMEO bounds accept(2) too.
    set_timeout(&listener, timeout)?;
    let (stream, _) = listener.accept().map_err(|err| format!("accept: {err}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|err| format!("set timeout: {err}"))?;
    answer(stream)
}

fn vsock_socket() -> Result<OwnedFd, String> {
    // SAFETY: socket(2) with constant arguments; it returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "AF_VSOCK socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a descriptor this process just opened and owns nowhere else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value (reserved fields zero).
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

const VM_ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

fn vsock_connect(cid: u32, port: u32) -> Result<OwnedFd, String> {
    use std::os::fd::AsRawFd;
    let fd = vsock_socket()?;
    let addr = vsock_addr(cid, port);
    // SAFETY: addr is a valid sockaddr_vm and VM_ADDR_LEN its size; fd is an open socket.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), VM_ADDR_LEN) };
    if rc < 0 {
        return Err(format!(
            "connect to vsock {cid}:{port}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

fn vsock_listen(port: u32, timeout: Duration) -> Result<OwnedFd, String> {
    use std::os::fd::AsRawFd;
    let fd = vsock_socket()?;
    // SO_RCVTIMEO bounds accept(2) too.
    set_timeout(&fd, timeout)?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: addr is a valid sockaddr_vm and VM_ADDR_LEN its size; fd is an open socket.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), VM_ADDR_LEN) };
    if rc < 0 {
        return Err(format!(
            "bind vsock port {port}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a bound stream socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 1) } < 0 {
        return Err(format!("listen: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a listening socket; null address pointers are allowed by accept4(2).
    let conn = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if conn < 0 {
        return Err(format!("accept: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: conn is a descriptor accept4 just returned to this process.
    Ok(unsafe { OwnedFd::from_raw_fd(conn) })
}

/// Read and write timeouts on a socket held as a file.
fn set_timeout(socket: &impl std::os::fd::AsRawFd, timeout: Duration) -> Result<(), String> {
    let tv = libc::timeval {
        // time_t is 64-bit on every x86_64 libc; a timeout too large for it cannot be asked for.
        tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
        tv_usec: 0,
    };
    for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: tv is a valid timeval and its size is passed; socket is an open socket.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(format!(
                "set socket timeout: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}
