//! Install throughput (MB/s of layer data) of `faasd::image::install` for a ~30 MB image,
//! against `tar -x` of the same layer, plain and gzip-compressed, in one run.
//!
//! cargo bench --bench image_install

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use faasd::image::{install, Limits};

/// Deterministic pseudo-random bytes (xorshift), half of each file compressible text so that
/// gzip has something to do.
fn fill(buf: &mut [u8], seed: &mut u64) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let bytes = if i % 2 == 0 {
            seed.to_le_bytes()
        } else {
            *b"faasd-fn"
        };
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// A layer of ~30 MB: 40 dirs x 12 files of 1 KiB..128 KiB, a few symlinks and hardlinks.
fn make_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut total = 0usize;
    let mut n = 0usize;
    'outer: for d in 0..400 {
        let dir = format!("usr/lib/pkg{d:03}");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, &dir, &[][..]).unwrap();
        for f in 0..12 {
            let size = 1024 + (((seed >> 11) as usize) % (128 * 1024));
            let mut data = vec![0u8; size];
            fill(&mut data, &mut seed);
            let mut h = tar::Header::new_gnu();
            h.set_mode(if f == 0 { 0o755 } else { 0o644 });
            h.set_size(size as u64);
            h.set_mtime(1_600_000_000);
            let path = format!("{dir}/file{f:02}.bin");
            b.append_data(&mut h, &path, &data[..]).unwrap();
            if f == 1 {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, format!("{dir}/link"), "file01.bin")
                    .unwrap();
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, format!("{dir}/hard"), &path).unwrap();
            }
            total += size;
            n += 1;
            if total >= 30 << 20 {
                break 'outer;
            }
        }
    }
    eprintln!("bench layer: {n} files, {} MB of file data", total >> 20);
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A classic-layout `docker save` archive holding `layer`.
fn make_image(layer: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let members: [(&str, &[u8]); 3] = [
        ("0123/layer.tar", layer),
        ("cfg.json", br#"{"config":{"Cmd":["/bin/true"]}}"#),
        (
            "manifest.json",
            br#"[{"Config":"cfg.json","Layers":["0123/layer.tar"]}]"#,
        ),
    ];
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn tar_x(archive: &Path, dest: &Path, gz: bool) {
    std::fs::create_dir(dest).unwrap();
    let st = Command::new("tar")
        .arg(if gz { "-xzf" } else { "-xf" })
        .arg(archive)
        .arg("-C")
        .arg(dest)
        .status()
        .expect("run tar");
    assert!(st.success());
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let work: PathBuf = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let layer = make_layer();
    let layer_gz = gzip(&layer);
    let limits = Limits::default();

    let mut g = c.benchmark_group("image_install");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(layer.len() as u64));
    for (label, blob) in [("plain", &layer), ("gzip", &layer_gz)] {
        let gz = label == "gzip";
        let image = make_image(blob);
        let layer_file = tmp.path().join(format!("layer-{label}.tar"));
        std::fs::write(&layer_file, blob).unwrap();

        g.bench_function(format!("faasd_install_{label}"), |bch| {
            bch.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let staged = install(&image[..], &work, &limits).expect("install");
                    spent += t.elapsed();
                    drop(staged); // removal is not timed
                }
                spent
            })
        });
        g.bench_function(format!("tar_x_{label}"), |bch| {
            bch.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for i in 0..iters {
                    let dest = tmp.path().join(format!("tar-{label}-{i}"));
                    let t = Instant::now();
                    tar_x(&layer_file, &dest, gz);
                    spent += t.elapsed();
                    std::fs::remove_dir_all(&dest).unwrap();
                }
                spent
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
