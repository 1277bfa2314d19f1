//! The kernel's floor for serving WAL over loopback TCP on this machine: CPU seconds per GB
//! spent by the *sending* thread alone, for the ways a walsender can hand bytes to a socket
//! (see docs/benchmarks.md, "Serving CPU floor").
//!
//!   cargo run --release --example send_floor [-- GB RUNS]     # default 1 GB, 5 runs
//!
//! Each mode sends GB of 128 kB XLogData-sized messages (a 30-byte header before each, as
//! a walsender frames them) from one thread to a reader thread over a loopback TCP
//! connection; the reader discards what it reads (1 MB reads). The sender's CPU is its own
//! thread's (getrusage RUSAGE_THREAD): on loopback it includes the receive-side TCP
//! processing the kernel runs in the sender's context, which is what a walsender pays too.
//! Modes, alternated per run, medians and min–max printed as RESULT lines:
//!   memory     1 MB vectored writes from memory (walrelay serving from its tail or cache)
//!   pread      pread of 1 MB from a page-cached file, then the same vectored write (a
//!              walsender reading its segment file, as PostgreSQL's does)
//!   sendfile   the header with MSG_MORE, then sendfile(2) of 128 kB from the file
//! The file is a temporary one of GB bytes, read once before the runs (page cache warm).

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Instant;

const MSG: usize = 128 * 1024;
const HDR: [u8; 30] = [0; 30];

fn thread_cpu() -> f64 {
    // SAFETY: getrusage writes the struct it is given; zeroed is a valid initial value.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut r);
        let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
        t(r.ru_utime) + t(r.ru_stime)
    }
}

fn write_all_vectored(s: &mut TcpStream, mut slices: &mut [IoSlice<'_>]) {
    while !slices.is_empty() {
        let n = s.write_vectored(slices).expect("write");
        IoSlice::advance_slices(&mut slices, n);
    }
}

/// Sends `len` bytes in `mode`; returns (seconds, sender CPU seconds).
fn run(mode: &str, file: &std::fs::File, len: usize) -> (f64, f64) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let reader = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connect");
        let mut b = vec![0u8; 1 << 20];
        let mut n = 0usize;
        loop {
            match c.read(&mut b) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => panic!("read: {e}"),
            }
        }
        n
    });
    let (mut s, _) = l.accept().expect("accept");
    let mut buf = vec![7u8; 1 << 20];
    let c0 = thread_cpu();
    let t0 = Instant::now();
    let mut off = 0usize;
    while off < len {
        let n = buf.len().min(len - off);
        match mode {
            "memory" | "pread" => {
                if mode == "pread" {
                    file.read_exact_at(&mut buf[..n], off as u64)
                        .expect("pread");
                }
                let mut sl = Vec::with_capacity(2 * n / MSG + 2);
                let mut p = 0;
                while p < n {
                    let k = MSG.min(n - p);
                    sl.push(IoSlice::new(&HDR));
                    sl.push(IoSlice::new(&buf[p..p + k]));
                    p += k;
                }
                write_all_vectored(&mut s, &mut sl);
            }
            "sendfile" => {
                let mut p = 0;
                while p < n {
                    let k = MSG.min(n - p);
                    // SAFETY: send reads HDR's bytes; the descriptor is the open socket.
                    let r = unsafe {
                        libc::send(
                            s.as_raw_fd(),
                            HDR.as_ptr().cast(),
                            HDR.len(),
                            libc::MSG_MORE,
                        )
                    };
                    assert_eq!(r, HDR.len() as isize, "send");
                    let mut pos = (off + p) as libc::off_t;
                    let end = off + p + k;
                    while (pos as usize) < end {
                        // SAFETY: both descriptors are open; pos is a valid offset pointer.
                        let r = unsafe {
                            libc::sendfile(
                                s.as_raw_fd(),
                                file.as_raw_fd(),
                                &mut pos,
                                end - pos as usize,
                            )
                        };
                        assert!(r > 0, "sendfile");
                    }
                    p += k;
                }
            }
            m => panic!("unknown mode {m}"),
        }
        off += n;
    }
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let got = reader.join().expect("reader");
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), thread_cpu() - c0);
    assert!(got >= len, "reader got {got} of {len}");
    (secs, cpu)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gb: f64 = args.get(1).map_or(1.0, |s| s.parse().expect("GB"));
    let runs: usize = args.get(2).map_or(5, |s| s.parse().expect("RUNS"));
    let len = ((gb * (1u64 << 30) as f64) as usize) / (1 << 20) * (1 << 20);
    let path = std::env::temp_dir().join(format!("walrelay-send-floor-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&path).expect("create");
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        for _ in 0..len / (1 << 20) {
            f.write_all(&chunk).expect("write");
        }
    }
    let file = std::fs::File::open(&path).expect("open");
    let mut sink = vec![0u8; 1 << 20];
    for o in (0..len).step_by(1 << 20) {
        file.read_exact_at(&mut sink, o as u64).expect("warm");
    }
    let modes = ["memory", "pread", "sendfile"];
    let mut cpu = vec![Vec::new(); modes.len()];
    let mut mbps = vec![Vec::new(); modes.len()];
    for r in 0..runs {
        for (i, m) in modes.iter().enumerate() {
            let (secs, c) = run(m, &file, len);
            let g = len as f64 / (1u64 << 30) as f64;
            println!(
                "run {} {m:9} {:7.0} MB/s  {:.3} CPU-s/GB",
                r + 1,
                len as f64 / 1048576.0 / secs,
                c / g
            );
            cpu[i].push(c / g);
            mbps[i].push(len as f64 / 1048576.0 / secs);
        }
    }
    let _ = std::fs::remove_file(&path);
    for (i, m) in modes.iter().enumerate() {
        let lo = cpu[i].iter().copied().fold(f64::MAX, f64::min);
        let hi = cpu[i].iter().copied().fold(0.0, f64::max);
        println!(
            "RESULT send_floor {m} cpu_s_per_gb={:.3} cpu_s_per_gb_min={lo:.3} cpu_s_per_gb_max={hi:.3} mbps={:.0}",
            median(&mut cpu[i]),
            median(&mut mbps[i])
        );
    }
}
