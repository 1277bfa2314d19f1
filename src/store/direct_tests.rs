//! Tests of [`super::SegmentFile`]: both write paths, on a real filesystem (the build
//! directory's, where O_DIRECT is accepted) and on tmpfs (`/dev/shm`, where it is refused).

use super::*;
use std::path::PathBuf;

const SEG: u64 = 4 << 20;

/// A directory on the build directory's filesystem (not /tmp, which may be tmpfs).
fn disk_dir() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// A reserved segment file as the store creates it: `SEG` bytes of zeros.
fn create(dir: &Path, name: &str, content: Option<&[u8]>) -> (PathBuf, File) {
    let path = dir.join(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    match content {
        Some(c) => file.write_all_at(c, 0).unwrap(),
        None => assert!(crate::store::fsutil::allocate(&file, 0, SEG).unwrap()),
    }
    file.set_len(SEG).unwrap();
    file.sync_all().unwrap();
    (path, file)
}

/// Deterministic bytes, never all zero.
fn wal(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn the_open_page_is_written_padded_and_rewritten_until_full() {
    let dir = disk_dir();
    let (path, file) = create(dir.path(), "seg.partial", None);
    let mut s = SegmentFile::open(file, &path, SEG, false, true).unwrap();
    assert_eq!(
        s.mode(),
        Mode::Direct,
        "O_DIRECT refused on the build directory"
    );
    let data = wal(3 * PAGE + 500, 1);
    // 100 bytes: nothing reaches the file before the sync
    s.write_at(&data[..100], 0).unwrap();
    assert!(read(&path)[..PAGE].iter().all(|&b| b == 0));
    // ...but a read of the open file sees them
    let mut got = vec![0u8; 200];
    s.read_at(&mut got, 0).unwrap();
    assert_eq!(&got[..100], &data[..100]);
    assert!(got[100..].iter().all(|&b| b == 0));
    s.sync_data().unwrap();
    let f = read(&path);
    assert_eq!(&f[..100], &data[..100]);
    assert!(f[100..].iter().all(|&b| b == 0), "the padding is zeros");
    // the same page again, fuller, then across two more pages
    s.write_at(&data[100..5000], 100).unwrap();
    s.sync_data().unwrap();
    let f = read(&path);
    assert_eq!(&f[..5000], &data[..5000]);
    assert!(f[5000..].iter().all(|&b| b == 0));
    s.write_at(&data[5000..], 5000).unwrap();
    s.sync_data().unwrap();
    let f = read(&path);
    assert_eq!(&f[..data.len()], &data[..]);
    assert!(f[data.len()..].iter().all(|&b| b == 0));
    assert_eq!(f.len() as u64, SEG);
}

#[test]
fn a_completed_segment_is_byte_identical_through_uneven_writes_and_syncs() {
    let dir = disk_dir();
    let (path, file) = create(dir.path(), "seg.partial", None);
    let mut s = SegmentFile::open(file, &path, SEG, false, true).unwrap();
    assert_eq!(s.mode(), Mode::Direct);
    let data = wal(SEG as usize, 7);
    let sizes = [
        1usize,
        8191,
        8192,
        8193,
        131_072,
        100_000,
        1 << 20,
        3,
        2_000_000,
    ];
    let mut off = 0usize;
    let mut i = 0usize;
    while off < data.len() {
        let n = sizes[i % sizes.len()].min(data.len() - off);
        s.write_at(&data[off..off + n], off as u64).unwrap();
        off += n;
        if i % 3 == 0 {
            s.sync_data().unwrap();
        }
        i += 1;
    }
    s.sync_data().unwrap();
    drop(s);
    assert!(
        read(&path) == data,
        "the segment differs from the WAL written"
    );
}

/// tmpfs (`/dev/shm`): O_DIRECT is refused before Linux 6.6 and accepted since; the bytes
/// are exact either way.
#[test]
fn writes_on_tmpfs_are_exact() {
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "/dev/shm is missing");
    let dir = tempfile::tempdir_in(shm).unwrap();
    let (path, file) = create(dir.path(), "seg.partial", Some(&[]));
    let mut s = SegmentFile::open(file, &path, SEG, false, true).unwrap();
    let data = wal(3 << 20, 3);
    for (k, c) in data.chunks(300_000).enumerate() {
        s.write_at(c, (k * 300_000) as u64).unwrap();
    }
    s.sync_data().unwrap();
    let f = read(&path);
    assert_eq!(&f[..data.len()], &data[..]);
    assert!(f[data.len()..].iter().all(|&b| b == 0));
}

/// O_DIRECT refused at open (EINVAL, the scripted refusal of [`super::refuse`]): buffered
/// writes, in the file at once, exact after the sync.
#[test]
fn o_direct_refused_at_open_falls_back_to_buffered_writes() {
    let dir = disk_dir();
    let (path, file) = create(dir.path(), "seg.partial", None);
    refuse::OPEN.with(|c| c.set(true));
    let s = SegmentFile::open(file, &path, SEG, false, true);
    refuse::OPEN.with(|c| c.set(false));
    let mut s = s.unwrap();
    assert_eq!(s.mode(), Mode::Buffered);
    let data = wal(3 << 20, 3);
    for (k, c) in data.chunks(300_000).enumerate() {
        s.write_at(c, (k * 300_000) as u64).unwrap();
        // on this path written bytes are in the file at once
        assert_eq!(&read(&path)[k * 300_000..k * 300_000 + c.len()], c);
    }
    s.sync_data().unwrap();
    let f = read(&path);
    assert_eq!(&f[..data.len()], &data[..]);
    assert!(f[data.len()..].iter().all(|&b| b == 0));
}

/// O_DIRECT accepted at open but refused at the first write (at a sync, then at a full
/// buffer): what the buffer held is written buffered, nothing is lost.
#[test]
fn o_direct_refused_at_a_write_falls_back_without_losing_bytes() {
    for at_sync in [true, false] {
        let dir = disk_dir();
        let (path, file) = create(dir.path(), "seg.partial", None);
        let mut s = SegmentFile::open(file, &path, SEG, false, true).unwrap();
        assert_eq!(s.mode(), Mode::Direct);
        let data = wal(BUF_BYTES + 3 * PAGE + 11, 17);
        s.write_at(&data[..5000], 0).unwrap();
        refuse::WRITE.with(|c| c.set(true));
        let r = if at_sync {
            s.sync_data()
        } else {
            s.write_at(&data[5000..], 5000)
        };
        refuse::WRITE.with(|c| c.set(false));
        r.unwrap();
        assert_eq!(s.mode(), Mode::Buffered);
        if at_sync {
            s.write_at(&data[5000..], 5000).unwrap();
        }
        s.sync_data().unwrap();
        let f = read(&path);
        assert_eq!(&f[..data.len()], &data[..], "at_sync {at_sync}");
        assert!(f[data.len()..].iter().all(|&b| b == 0));
    }
}

/// A segment that existed (a `.partial` being re-received from its start): the padding of a
/// sync is the file's own bytes, so a sync never makes it hold less than before.
#[test]
fn re_receiving_an_existing_partial_keeps_its_bytes_past_the_write() {
    let dir = disk_dir();
    let old = wal(2 << 20, 11);
    let (path, file) = create(dir.path(), "seg.partial", Some(&old));
    let mut s = SegmentFile::open(file, &path, SEG, true, true).unwrap();
    assert_eq!(s.mode(), Mode::Direct);
    // the same bytes again, a little at a time
    s.write_at(&old[..100], 0).unwrap();
    s.sync_data().unwrap();
    assert!(
        read(&path)[..old.len()] == old[..],
        "a sync cut the old WAL"
    );
    s.write_at(&old[100..1_500_000], 100).unwrap();
    s.sync_data().unwrap();
    let f = read(&path);
    assert!(f[..old.len()] == old[..], "a sync cut the old WAL");
    assert!(f[old.len()..].iter().all(|&b| b == 0));
}

/// A write that does not continue the previous one (the store restarts a stream mid-page):
/// the page's bytes before it come from the file.
#[test]
fn a_restart_inside_a_page_keeps_the_bytes_before_it() {
    let dir = disk_dir();
    let (path, file) = create(dir.path(), "seg.partial", None);
    let mut s = SegmentFile::open(file, &path, SEG, false, true).unwrap();
    let data = wal(40_000, 5);
    s.write_at(&data[..20_000], 0).unwrap();
    s.sync_data().unwrap();
    s.write_at(&data[10_000..12_000], 10_000).unwrap();
    s.write_at(&data[12_000..], 12_000).unwrap();
    s.sync_data().unwrap();
    let f = read(&path);
    assert_eq!(&f[..data.len()], &data[..]);
    assert!(f[data.len()..].iter().all(|&b| b == 0));
}

/// Crash consistency with the power-loss fake ([`crate::store::lossy`]): what was not synced
/// is lost (held in memory by the fake, or in the direct buffer), what was synced stays, and
/// re-receiving after the crash never takes synced bytes away.
#[test]
fn unsynced_writes_are_lost_on_a_crash_and_synced_ones_kept() {
    let dir = disk_dir();
    let (path, file) = create(dir.path(), "seg.partial", None);
    let mut s = SegmentFile::open(file, &path, SEG, false, true).unwrap();
    let data = wal(30_000, 9);
    let mut pending = crate::store::lossy::Pending::default();
    pending.write(0, &data[..10_000]);
    // the store's sync: the fake's writes go to the segment file, then fdatasync
    pending.apply(|d, o| s.write_at(d, o)).unwrap();
    s.sync_data().unwrap();
    pending.write(10_000, &data[10_000..20_000]);
    // not synced: written into the direct buffer, then the process dies
    s.write_at(&data[20_000..], 20_000).unwrap();
    drop((s, pending));
    let f = read(&path);
    assert_eq!(&f[..10_000], &data[..10_000]);
    assert!(
        f[10_000..].iter().all(|&b| b == 0),
        "unsynced bytes survived"
    );
    // restart: re-received from the start, a sync in the middle of what was synced
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut s = SegmentFile::open(file, &path, SEG, true, true).unwrap();
    s.write_at(&data[..3000], 0).unwrap();
    s.sync_data().unwrap();
    drop(s);
    let f = read(&path);
    assert_eq!(&f[..10_000], &data[..10_000], "synced WAL was lost");
}

#[test]
fn buffered_when_asked() {
    let dir = disk_dir();
    let (path, file) = create(dir.path(), "seg.partial", None);
    let mut s = SegmentFile::open(file, &path, SEG, false, false).unwrap();
    assert_eq!(s.mode(), Mode::Buffered);
    let data = wal(2 * WRITEBACK_BYTES as usize + 77, 13);
    s.write_at(&data, 0).unwrap();
    s.sync_data().unwrap();
    assert_eq!(&read(&path)[..data.len()], &data[..]);
}

/// A buffered reader of the segment (a walsender's `WalReader`, the archiver) that cached the
/// open page before a direct re-write of it reads the new bytes afterwards: the O_DIRECT
/// write invalidates the cached page.
#[test]
fn a_buffered_reader_sees_the_re_written_open_page() {
    let dir = disk_dir();
    let (path, file) = create(dir.path(), "seg.partial", None);
    let mut s = SegmentFile::open(file, &path, SEG, false, true).unwrap();
    assert_eq!(s.mode(), Mode::Direct);
    let data = wal(3 * PAGE, 21);
    let reader = File::open(&path).unwrap();
    let mut got = vec![0u8; 3 * PAGE];
    for (i, end) in [1000usize, 5000, PAGE + 10, 3 * PAGE]
        .into_iter()
        .enumerate()
    {
        let from = [0usize, 1000, 5000, PAGE + 10][i];
        s.write_at(&data[from..end], from as u64).unwrap();
        s.sync_data().unwrap();
        // the same descriptor, whose pages were cached by the previous read
        reader.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(
            &got[..end],
            &data[..end],
            "stale page cache after {end} bytes"
        );
        assert!(got[end..].iter().all(|&b| b == 0));
    }
}
