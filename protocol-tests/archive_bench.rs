//! Archive throughput against SeaweedFS by upload concurrency (ignored by default; run by
//! `bench/archive.sh`). Uploads 32 segments of 16 MB (incompressible-ish pseudo-random data,
//! so compression does not flatter the numbers) through the archiver's upload path
//! (create-if-absent PUT), at concurrency 1, 2, 4, 8, and prints MB/s.
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use walrelay::archive::backend;
use walrelay::archive::layout::sha256_hex;
use walrelay::archive::upload::{put_create, UploadPolicy};
use walrelay::config::ArchiveConfig;

use crate::harness::s3::S3Server;

#[test]
#[ignore]
fn archive_throughput_by_concurrency() {
    let s3 = S3Server::start();
    let mut cfg = ArchiveConfig::default();
    cfg.s3.endpoint = Some(s3.endpoint());
    cfg.s3.region = Some(s3.region().into());
    cfg.s3.access_key_id = Some(s3.access_key().into());
    cfg.s3.secret_access_key = Some(s3.secret_key().into());
    let b = backend::open(&format!("s3://{}/bench", s3.bucket()), &cfg).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let seg: Vec<u8> = (0..16 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let seg = Bytes::from(seg);
    let sha = sha256_hex(&seg);
    let n = 32usize;
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!("| concurrency | segments | seconds | MB/s |");
    println!("|---|---|---|---|");
    for conc in [1usize, 2, 4, 8] {
        let start = Instant::now();
        rt.block_on(async {
            futures::stream::iter(0..n)
                .map(|i| {
                    let b = b.clone();
                    let seg = seg.clone();
                    let sha = sha.clone();
                    async move {
                        let p = b.prefix.child(format!("c{conc}")).child(format!("{i:08}"));
                        put_create(&b.store, &p, seg, &sha, 16 << 20, &UploadPolicy::default())
                            .await
                            .unwrap();
                    }
                })
                .buffer_unordered(conc)
                .collect::<Vec<()>>()
                .await;
        });
        let secs = start.elapsed().as_secs_f64();
        println!(
            "| {conc} | {n} | {secs:.2} | {:.0} |",
            (n as f64 * 16.0) / secs.max(1e-9)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
